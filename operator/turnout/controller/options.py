"""What ``turnout operator`` accepts: each option declared once, as a field of :class:`Options`.

A field's declaration holds its default, its flags, its help and its argparse group; the parser
(:func:`add_arguments`) and the conversion back (:func:`options_from`) are derived from the fields. The
kind of flag follows the default: ``False`` a switch, a list a repeatable flag, a number that number's
type, anything else a string. ``%(default)g`` in a help text says the default.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

#: The mutually exclusive scope flags and the autoscaling options (argparse groups).
SCOPE = "scope"
AUTOSCALING = "autoscaling (ModelDeployments with spec.autoscaling)"
LEADER = "leader election (several replicas)"


def _flag(*flags: str, help: str, metavar: str | None = None, group: str | None = None) -> dict[str, Any]:
    """A field's command-line side (its ``metadata``)."""
    return {"flags": flags, "help": help, "metavar": metavar, "group": group}


def _option(default: Any, *flags: str, help: str, metavar: str | None = None, group: str | None = None) -> Any:
    """A field of :class:`Options` with a single value that is also a command-line flag."""
    return field(default=default, metadata=_flag(*flags, help=help, metavar=metavar, group=group))


@dataclass
class Options:
    """What ``turnout operator`` accepts (in the order ``--help`` lists it)."""

    all_namespaces: bool = _option(False, "-A", "--all-namespaces", group=SCOPE,
                                   help="watch every namespace (default)")
    namespaces: list[str] = field(default_factory=list, metadata=_flag(
        "-n", "--namespace", metavar="NS", group=SCOPE, help="watch this namespace only (repeatable; exact names)"))
    config_path: str | None = _option(None, "-c", "--config", metavar="FILE",
                                      help="operator config YAML (images per engine and accelerator, autoEngines, ...)")
    metrics_port: int = _option(8080, "--metrics-port", metavar="PORT",
                                help="port of /metrics (default %(default)s; 0: off)")
    health_port: int = _option(8081, "--health-port", metavar="PORT",
                               help="port of /healthz (default %(default)s; 0: off)")
    bind_address: str = _option("0.0.0.0", "--bind-address", metavar="ADDR",
                                help="address of the metrics and health servers (default %(default)s)")
    #: A KopfPeering name for several replicas; standalone when None.
    peering: str | None = _option(None, "--peering", metavar="NAME",
                                  help="KopfPeering object name for active/standby replicas (default: standalone)")
    leader_elect: bool = _option(False, "--leader-elect", group=LEADER,
                                 help="run several replicas: only the holder of a coordination.k8s.io Lease "
                                      "reconciles (client-go timings: 15 s lease, 10 s renew deadline, 2 s retry); "
                                      "a leader that loses the Lease exits 1")
    lease_name: str = _option("turnout-operator", "--leader-election-id", metavar="NAME", group=LEADER,
                              help="name of the Lease (default: %(default)s)")
    lease_namespace: str | None = _option(None, "--leader-election-namespace", metavar="NS", group=LEADER,
                                          help="namespace of the Lease (default: the pod's own)")
    lease_identity: str | None = _option(None, "--leader-election-identity", metavar="ID", group=LEADER,
                                         help="this replica's holderIdentity (default: the host name, which is "
                                              "the pod's name)")
    lease_duration: float = _option(15.0, "--leader-elect-lease-duration", metavar="SECONDS", group=LEADER,
                                    help="how long a standby waits after the last renewal seen before it takes the "
                                         "Lease (default: %(default)g)")
    renew_deadline: float = _option(10.0, "--leader-elect-renew-deadline", metavar="SECONDS", group=LEADER,
                                    help="how long the leader keeps trying to renew before it gives up leading "
                                         "(default: %(default)g)")
    retry_period: float = _option(2.0, "--leader-elect-retry-period", metavar="SECONDS", group=LEADER,
                                  help="seconds between renewals and between a standby's tries (default: %(default)g)")
    kubeconfig: str | None = _option(None, "--kubeconfig", metavar="FILE",
                                     help="kubeconfig to use (default: $KUBECONFIG, else the pod's service account, "
                                          "else ~/.kube/config)")
    context: str | None = _option(None, "--context", metavar="NAME", help="kubeconfig context (default: current)")
    discovery_interval: float = _option(60.0, "--discovery-interval", metavar="SECONDS",
                                        help="how often to ask API discovery whether LeaderWorkerSet and "
                                             "InferencePool are served (default: %(default)g)")
    key_interval: float = _option(10.0, "--key-refresh-interval", metavar="SECONDS",
                                  help="how often the API keys named by apiKeySecretRef are read again, so the "
                                       "digests published to the gateway follow a rotated key (default: %(default)g)")
    gateway_metrics_urls: list[str] = field(default_factory=list, metadata=_flag(
        "--gateway-metrics-url", metavar="URL", group=AUTOSCALING,
        help="a turnout gateway's /metrics to read in-flight and queued requests from (repeatable)"))
    gateway_service: str | None = _option(None, "--gateway-service", metavar="NAMESPACE/NAME", group=AUTOSCALING,
                                          help="scrape /metrics of every ready endpoint of this gateway Service "
                                               "(its EndpointSlices)")
    autoscale_interval: float = _option(15.0, "--autoscale-interval", metavar="SECONDS", group=AUTOSCALING,
                                        help="seconds between load samples, the autoscaler's and the LoRA adapters' "
                                             "(default: %(default)g)")
    autoscale_window: float = _option(60.0, "--autoscale-window", metavar="SECONDS", group=AUTOSCALING,
                                      help="seconds of samples the load is averaged over (default: %(default)g)")
    scrape_timeout: float = _option(2.0, "--scrape-timeout", metavar="SECONDS", group=AUTOSCALING,
                                    help="timeout of one metrics scrape (default: %(default)g)")
    inference_pool: bool = _option(False, "--inference-pool",
                                   help="render a Gateway API Inference Extension InferencePool per ModelDeployment "
                                        "(when the cluster serves inference.networking.k8s.io/v1)")
    verbose: bool = _option(False, "-v", "--verbose", help="debug logging")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's command-line options (shared by ``turnout operator`` and ``python -m``), from :class:`Options`."""
    groups: dict[str | None, Any] = {
        None: parser,
        SCOPE: parser.add_mutually_exclusive_group(),
        AUTOSCALING: parser.add_argument_group(AUTOSCALING),
        LEADER: parser.add_argument_group(LEADER),
    }
    for f in fields(Options):
        meta = f.metadata
        default = [] if f.default is MISSING else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if default is False:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(default=default, metavar=meta["metavar"])
            if isinstance(default, list):
                kwargs["action"] = "append"
            elif isinstance(default, (int, float)):
                kwargs["type"] = type(default)
        groups[meta["group"]].add_argument(*meta["flags"], **kwargs)


def options_from(ns: argparse.Namespace) -> Options:
    """The options a parsed command line gives; no ``--namespace`` means every namespace."""
    values = {f.name: getattr(ns, f.name) for f in fields(Options)}
    values = {k: list(v) if isinstance(v, list) else v for k, v in values.items()}
    values["all_namespaces"] = bool(values["all_namespaces"]) or not values["namespaces"]
    return Options(**values)
