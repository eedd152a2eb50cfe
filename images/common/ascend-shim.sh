#!/bin/bash
# `turnout-shim` for the Ascend images: load the CANN environment (toolkit,
# ATB kernels), which the base images set up only in root's ~/.bashrc, then run
# the shim with the interpreter that has it installed.
for env_file in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnal/atb/set_env.sh; do
    # shellcheck disable=SC1090
    [ -f "$env_file" ] && . "$env_file"
done
exec python3 -m turnout.shim "$@"
