#!/usr/bin/env python3
"""Render the chart's Grafana dashboard over real figures into docs/images/dashboard.png.

    make dashboard-png          # installs matplotlib and Debian's prometheus when missing, then runs this
    python scripts/render-dashboard.py [--out docs/images/dashboard.png] [--keep DIR]

There is no Grafana offline, so this plays the cluster and Grafana's drawing, and runs everything
else for real, on this machine only (127.0.0.0/8):

* the API server is the test emulator (``tests/controller/fakekube.py``, real HTTP, the CRD's schema);
* the **operator** (``python -m turnout.controller``, autoscaling every 2 s over a 10 s window) and
  the **gateway** (``turnout gateway``) run as their own processes against it;
* the script plays the Deployment controller and kubelet: for each operator-made Deployment it runs
  ``spec.replicas`` **shims** (``python -m turnout.shim --engine vllm``, each on its own loopback
  address, the stand-in engine ``benchmarks/standin_engine.py`` as "vLLM", 20 tokens/s per stream),
  and writes the Deployment's status and the Service's EndpointSlice the gateway routes by;
* **Prometheus** (Debian's ``prometheus``) scrapes the operator, the gateway and every shim each
  second, with the target labels the chart's ServiceMonitors (``honor_labels``) and PodMonitor
  (``namespace``, ``pod``, ``modeldeployment``) give them;
* traffic goes through the gateway: ``tiny-chat`` (autoscaled 0..3, 2 in flight per replica) is woken
  from zero, loaded up to 8 streams, one of its replicas is killed mid-stream, then left idle until it
  is back at zero; ``tiny-code`` (one replica) gets a steady stream throughout.

Then each panel's queries from ``charts/turnout/dashboards/turnout.json`` are run unchanged by
Prometheus (``/api/v1/query_range``; ``$__rate_interval`` = 10s, ``$namespace``/``$model`` = All) and
drawn with matplotlib at their ``gridPos``, in Grafana's dark theme. About four minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests" / "controller")]
import kmock  # noqa: E402
from benchlib import PYTHON, Proc, free_port, start_proc  # noqa: E402
from fakekube import FakeKube  # noqa: E402

from turnout.render.manifests import child_name  # noqa: E402

DASHBOARD = ROOT / "charts" / "turnout" / "dashboards" / "turnout.json"
OUT = ROOT / "docs" / "images" / "dashboard.png"
CRD_FILE = ROOT / "crds" / "turnout.dev_modeldeployments.yaml"
MDS = ("turnout.dev", "v1alpha1", "modeldeployments")
DEPLOYMENTS = ("apps", "v1", "deployments")
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
NODES = ("", "v1", "nodes")
NS = "models"
SCRAPE = 1.0
RATE_INTERVAL = "10s"
TOKEN_DELAY = 0.05
TOKENS = 40
SCRAPE_LABELS = {"namespace": "turnout-system", "service": "turnout"}


def model(name: str, served: str, autoscaling: dict[str, Any] | None, replicas: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "qwen2.5-instruct", "size": 0.5, "format": "gguf",
                                      "quantization": "Q4_K_M"}, "servedModelName": served, "replicas": replicas}
    if autoscaling:
        spec["autoscaling"] = autoscaling
    return {"apiVersion": "turnout.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


class Kubelet:
    """Plays the Deployment controller and the kubelet for the operator's Deployments: shims as processes."""

    def __init__(self, api: FakeKube, tmp: Path, port: int, sd_file: Path) -> None:
        self.api, self.tmp, self.port, self.sd_file = api, tmp, port, sd_file
        self.pods: dict[str, list[tuple[str, Proc]]] = {}  # deployment -> [(address, shim)]
        self.served: dict[str, str] = {}
        self._next = 11
        self._seq = 0
        wrapper = tmp / "standin-python"
        wrapper.write_text(f'#!/bin/sh\nexec "{PYTHON}" "{ROOT / "benchmarks" / "standin_engine.py"}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self.wrapper = wrapper

    def _start(self, deployment: str, served: str) -> tuple[str, Proc]:
        address = f"127.0.0.{self._next}"
        self._next += 1
        self._seq += 1
        name = f"{deployment}-{self._seq:03d}"
        proc = start_proc(name, [PYTHON, "-m", "turnout.shim", "--engine", "vllm", "--model", "file:///standin",
                                 "--served-model-name", served, "--host", address, "--port", str(self.port)],
                          self.port, self.tmp / "logs",
                          env={"TURNOUT_VLLM_PYTHON": str(self.wrapper), "STANDIN_TOKEN_DELAY": str(TOKEN_DELAY)})
        return address, proc

    async def _ready(self, session: aiohttp.ClientSession, address: str, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            return False
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with session.get(f"http://{address}:{self.port}/health",
                                   timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        return False

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.step(session)
                except Exception:  # a step that failed is logged and tried again
                    traceback.print_exc()
                await asyncio.sleep(0.3)

    async def step(self, session: aiohttp.ClientSession) -> None:
        targets = []
        for dep in self.api.objects(DEPLOYMENTS, NS):
            name = dep["metadata"]["name"]
            pods = self.pods.setdefault(name, [])
            pods[:] = [(a, p) for a, p in pods if p.popen.poll() is None]  # a dead pod is gone; a new one follows
            want = int(dep["spec"].get("replicas", 1))
            served = self.served[name]
            while len(pods) < want:
                pods.append(self._start(name, served))
            while len(pods) > want:
                await asyncio.to_thread(pods.pop()[1].stop, 5)
            ready = [(a, p) for a, p in pods if await self._ready(session, a, p)]
            await self._publish(dep, ready)
            targets += [{"targets": [f"{a}:{self.port}"],
                         "labels": {"namespace": NS, "pod": p.name, "modeldeployment": name, "engine": "vllm"}}
                        for a, p in pods]
        tmp = self.sd_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets))
        tmp.replace(self.sd_file)

    async def _publish(self, dep: dict[str, Any], ready: list[tuple[str, Proc]]) -> None:
        name = dep["metadata"]["name"]
        replicas = int(dep["spec"].get("replicas", 1))
        status = {"observedGeneration": dep["metadata"]["generation"], "replicas": replicas,
                  "updatedReplicas": replicas, "readyReplicas": len(ready), "availableReplicas": len(ready)}
        if (dep.get("status") or {}) != status:
            await self.api.modify(DEPLOYMENTS, (NS, name), lambda o: {**o, "status": status}, status_only=True)
        service = child_name(name)
        endpoints = [{"addresses": [a], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": p.name}}
                     for a, p in ready]
        current = self.api.get(SLICES, NS, service)
        if current is None:
            await self.api.put_object(SLICES, {
                "metadata": {"name": service, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "http", "port": self.port, "protocol": "TCP"}]})
        elif current.get("endpoints") != endpoints:
            await self.api.modify(SLICES, (NS, service), lambda o: {**o, "endpoints": endpoints})

    def kill_one(self, deployment: str) -> None:
        """A replica's process dies mid-stream (SIGKILL: no drain); the next step starts another."""
        pods = self.pods.get(deployment) or []
        if pods:
            os.killpg(pods[-1][1].pid, signal.SIGKILL)

    def stop(self) -> None:
        for pods in self.pods.values():
            for _, proc in pods:
                proc.stop(5)


async def stream(session: aiohttp.ClientSession, url: str, served: str, n: int) -> None:
    body = {"model": served, "stream": True, "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": f"request {n}: say something"}]}
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=120)) as r:
            async for _ in r.content.iter_any():
                pass


class Load:
    """``streams`` clients of one model, each sending its next request when the last ends."""

    def __init__(self, url: str, served: str) -> None:
        self.url, self.served, self.streams, self._tasks = url, served, 0, []  # type: ignore[var-annotated]
        self._n = 0

    def set(self, streams: int) -> None:
        self.streams = streams
        while len(self._tasks) < streams:
            self._tasks.append(asyncio.create_task(self._client(len(self._tasks))))

    async def _client(self, i: int) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                if i >= self.streams:
                    await asyncio.sleep(0.2)
                    continue
                self._n += 1
                await stream(session, self.url, self.served, self._n)

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()


async def wait_http(url: str, proc: Proc, timeout: float = 120.0) -> None:
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - start < timeout:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{proc.name} did not answer {url}: {proc.tail()}")


def prometheus_config(tmp: Path, operator_port: int, gateway_port: int, sd_file: Path) -> Path:
    def static(job: str, port: int, pod: str) -> dict[str, Any]:
        return {"job_name": job, "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {**SCRAPE_LABELS, "pod": pod}}]}

    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE:g}s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [static("turnout-operator", operator_port, "turnout-operator-0"),
                           static("turnout-gateway", gateway_port, "turnout-gateway-0"),
                           {"job_name": "turnout-models",
                            "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}]}],
    }))
    return path


async def scenario(api: FakeKube, kubelet: Kubelet, gateway_url: str, log: Any) -> tuple[float, float]:
    """The traffic and events the dashboard shows; returns its (start, end) as Unix times."""
    chat, code = Load(gateway_url, "tiny-chat"), Load(gateway_url, "tiny-code")
    start = time.time()
    try:
        code.set(1)
        await asyncio.sleep(15)
        log("tiny-chat: 2 streams on a model at zero replicas (the gateway holds them and wakes it)")
        chat.set(2)
        await asyncio.sleep(25)
        log("tiny-chat: 5 streams")
        chat.set(5)
        code.set(2)
        await asyncio.sleep(25)
        log("tiny-chat: 8 streams")
        chat.set(8)
        await asyncio.sleep(20)
        log("tiny-chat: one replica killed mid-stream")
        kubelet.kill_one("tiny-chat")
        await asyncio.sleep(20)
        log("tiny-chat: idle until it is back at zero")
        chat.set(0)
        code.set(1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (api.get(MDS, NS, "tiny-chat") or {})["spec"].get("replicas") != 0:
            await asyncio.sleep(1)
        await asyncio.sleep(10)
    finally:
        chat.stop()
        code.stop()
    return start, time.time()


async def collect(prom_url: str, start: float, end: float) -> dict[int, list[list[dict[str, Any]]]]:
    """Panel id -> per target, Prometheus' matrix result of its query over [start, end]."""
    dashboard = json.loads(DASHBOARD.read_text())
    out: dict[int, list[list[dict[str, Any]]]] = {}
    async with aiohttp.ClientSession() as session:
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            results = []
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                        .replace("$namespace", ".*").replace("$model", ".*"))
                params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}
                async with session.get(f"{prom_url}/api/v1/query_range", params=params) as r:
                    body = await r.json()
                if body.get("status") != "success":
                    raise RuntimeError(f"{panel['title']}: {expr}: {body}")
                results.append(body["data"]["result"])
            out[panel["id"]] = results
    return out


# ----- drawing: Grafana's dark theme, 24 columns, 30 px per grid row -----

BG, PANEL, BORDER, TEXT, MUTED, GRID = "#111217", "#181b1f", "#2c3235", "#ccccdc", "#8e8e9e", "#24272b"
PALETTE = ["#73BF69", "#F2CC0C", "#5794F2", "#FF780A", "#F2495C", "#B877D9", "#8AB8FF", "#FF9830",
           "#96D98D", "#FFB357"]
COL_PX, ROW_PX, WIDTH_PX, TOP_PX = 75, 30, 1800, 56


def _legend(fmt: str, metric: dict[str, str]) -> str:
    out = fmt
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def _unit(unit: str, value: float) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
    if unit in ("reqps", "ops"):
        return f"{value:g} {'req/s' if unit == 'reqps' else 'ops/s'}"
    return f"{value:g}"


def draw(dashboard: dict[str, Any], data: dict[int, list[list[dict[str, Any]]]], start: float, end: float,
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    height = TOP_PX + bottom * ROW_PX + 10
    fig = plt.figure(figsize=(WIDTH_PX / 100, height / 100), dpi=100, facecolor=BG)
    plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 8})

    def box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """Pixels from the top left -> figure fraction (left, bottom, width, height)."""
        return x / WIDTH_PX, 1 - (y + h) / height, w / WIDTH_PX, h / height

    fig.text(12 / WIDTH_PX, 1 - 20 / height, "Turnout", color=TEXT, fontsize=13, fontweight="bold", va="center")
    chips = [("Data source", "Prometheus"), ("Namespace", "All"), ("Model", "All")]
    x = 12
    for label, value in chips:
        fig.text(x / WIDTH_PX, 1 - 44 / height, f" {label} ", color=TEXT, fontsize=8, va="center",
                 bbox={"facecolor": "#22252b", "edgecolor": BORDER, "boxstyle": "square,pad=0.35"})
        x += 7 * len(label) + 16
        fig.text(x / WIDTH_PX, 1 - 44 / height, f" {value} ", color=TEXT, fontsize=8, va="center",
                 bbox={"facecolor": BG, "edgecolor": BORDER, "boxstyle": "square,pad=0.35"})
        x += 7 * len(value) + 30
    span = time.strftime("%H:%M:%S", time.localtime(start))
    fig.text(1 - 12 / WIDTH_PX, 1 - 20 / height, f"{(end - start) / 60:.0f} minutes from {span} · real scrapes "
             "of the operator, gateway and shims (scripts/render-dashboard.py)", color=MUTED,
             fontsize=8, ha="right", va="center")

    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        px, py = g["x"] * COL_PX + 4, TOP_PX + g["y"] * ROW_PX + 2
        pw, ph = g["w"] * COL_PX - 8, g["h"] * ROW_PX - 6
        if panel["type"] == "row":
            fig.text(box(px, py, pw, ph)[0], 1 - (py + ph / 2 + 2) / height, f"⌄ {panel['title']}", color=TEXT,
                     fontsize=10, fontweight="bold", va="center")
            continue
        fig.patches.append(FancyBboxPatch(box(px, py, pw, ph)[:2], pw / WIDTH_PX, ph / height,
                                          boxstyle="round,pad=0,rounding_size=0.002", transform=fig.transFigure,
                                          facecolor=PANEL, edgecolor=BORDER, linewidth=0.8, zorder=-10))
        fig.text((px + 8) / WIDTH_PX, 1 - (py + 13) / height, panel["title"], color=TEXT, fontsize=9,
                 fontweight="bold", va="center")
        ax = fig.add_axes(box(px + 44, py + 28, pw - 54, ph - 76))
        ax.set_facecolor(PANEL)
        defaults = panel["fieldConfig"]["defaults"]
        custom, unit = defaults["custom"], defaults.get("unit", "short")
        series = []
        for target, result in zip(panel["targets"], data[panel["id"]], strict=True):
            for s in sorted(result, key=lambda s: _legend(target["legendFormat"], s["metric"])):
                ts = [float(t) - start for t, _ in s["values"]]
                vs = [float(v) for _, v in s["values"]]
                series.append((_legend(target["legendFormat"], s["metric"]), ts, vs))
        stacked = custom["stacking"]["mode"] == "normal"
        base: dict[float, float] = {}
        for i, (label, ts, vs) in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            if custom["drawStyle"] == "bars":
                ax.bar(ts, vs, width=0.9, color=color, alpha=0.8, label=label, linewidth=0)
                continue
            if stacked:
                lows = [base.get(t, 0.0) for t in ts]
                highs = [lo + v for lo, v in zip(lows, vs, strict=True)]
                ax.fill_between(ts, lows, highs, color=color, alpha=0.35, linewidth=0, step=None)
                ax.plot(ts, highs, color=color, linewidth=1.2, label=label)
                base.update(zip(ts, highs, strict=True))
            else:
                ax.fill_between(ts, vs, color=color, alpha=custom["fillOpacity"] / 100, linewidth=0)
                ax.plot(ts, vs, color=color, linewidth=1.4, label=label)
        ax.set_xlim(0, end - start)
        ax.set_ylim(bottom=0)
        if defaults.get("decimals") == 0:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        else:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, u=unit: _unit(u, v)))
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: time.strftime("%H:%M:%S", time.localtime(start + v))))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.tick_params(colors=MUTED, labelsize=7, length=0)
        ax.grid(True, color=GRID, linewidth=0.7)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if series:
            ax.legend(loc="upper left", bbox_to_anchor=(-0.09, -0.1), ncol=3, frameon=False, fontsize=7,
                      labelcolor=TEXT, handlelength=1.2, columnspacing=1.0, borderaxespad=0)
        else:
            ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BG, dpi=100)
    plt.close(fig)


async def main(out: Path, keep: Path | None) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("render-dashboard: error: no prometheus binary: apt-get install prometheus "
                         "(or run make dashboard-png, which does)")
    tmp = keep or Path(tempfile.mkdtemp(prefix="turnout-dashboard-"))
    tmp.mkdir(parents=True, exist_ok=True)
    logdir = tmp / "logs"

    def log(msg: str) -> None:
        print(f"render-dashboard: {msg}", flush=True)

    procs: list[Proc] = []
    async with FakeKube() as api, kmock.Server(api):
        crd = yaml.safe_load(CRD_FILE.read_text())
        api.schemas[MDS] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        await api.put_object(("", "v1", "namespaces"), {"metadata": {"name": NS}})
        await api.put_object(NODES, {"metadata": {"name": "cpu-1", "labels": {
            "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"}}, "spec": {}, "status": {
            "allocatable": {"cpu": "16", "memory": "64Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}})
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "render",
            "clusters": [{"name": "render", "cluster": {"server": str(api.url).rstrip("/")}}],
            "users": [{"name": "render", "user": {"token": "render"}}],
            "contexts": [{"name": "render", "context": {"cluster": "render", "user": "render"}}]}))
        shim_port, op_port, gw_port, prom_port = free_port(), free_port(), free_port(), free_port()
        config = tmp / "operator.yaml"
        config.write_text(yaml.safe_dump({"port": shim_port}))
        env = {"KUBECONFIG": str(kubeconfig)}
        sd_file = tmp / "pods.json"
        sd_file.write_text("[]")
        kubelet = Kubelet(api, tmp, shim_port, sd_file)
        kubelet.served = {child_name("tiny-chat"): "tiny-chat", child_name("tiny-code"): "tiny-code"}
        try:
            gateway = start_proc("gateway", [PYTHON, "-m", "turnout", "gateway", "-A", "--host", "127.0.0.1",
                                             "--port", str(gw_port), "--hold-timeout", "60"], gw_port, logdir, env)
            procs.append(gateway)
            operator = start_proc("operator", [
                PYTHON, "-m", "turnout.controller", "-A", "--config", str(config), "--bind-address", "127.0.0.1",
                "--metrics-port", str(op_port), "--health-port", "0",
                "--gateway-metrics-url", f"http://127.0.0.1:{gw_port}/metrics",
                "--autoscale-interval", "2", "--autoscale-window", "10"], op_port, logdir, env)
            procs.append(operator)
            prom = start_proc("prometheus", [
                prometheus, f"--config.file={prometheus_config(tmp, op_port, gw_port, sd_file)}",
                f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1d"], prom_port, logdir)
            procs.append(prom)
            await wait_http(f"http://127.0.0.1:{gw_port}/healthz", gateway)
            await wait_http(f"http://127.0.0.1:{op_port}/metrics", operator)
            await wait_http(f"http://127.0.0.1:{prom_port}/-/ready", prom)
            log(f"operator, gateway and Prometheus up (logs in {logdir})")
            await api.put_object(MDS, model("tiny-chat", "tiny-chat", {
                "minReplicas": 0, "maxReplicas": 3, "targetInFlightPerReplica": 2, "scaleDownDelaySeconds": 20}, 0))
            await api.put_object(MDS, model("tiny-code", "tiny-code", None, 1))
            runner = asyncio.create_task(kubelet.run())
            await api.wait_for(lambda: len(kubelet.pods.get(child_name("tiny-code"), [])) == 1
                               and (api.get(SLICES, NS, child_name("tiny-code")) or {}).get("endpoints"),
                               timeout=120, what="tiny-code serving")
            log("tiny-code serving; the scenario takes about three minutes")
            start, end = await scenario(api, kubelet, f"http://127.0.0.1:{gw_port}/v1/chat/completions", log)
            await asyncio.sleep(3 * SCRAPE)
            data = await collect(f"http://127.0.0.1:{prom_port}", start, end)
            (tmp / "data.json").write_text(json.dumps({"start": start, "end": end, "panels": data}))
            runner.cancel()
        finally:
            kubelet.stop()
            for proc in reversed(procs):
                proc.stop(10)
    draw(json.loads(DASHBOARD.read_text()), data, start, end, out)
    log(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="render-dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG to write (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR and keep it (logs, Prometheus data); default: a temporary folder, removed")
    parser.add_argument("--redraw", type=Path, default=None, metavar="DIR",
                        help="only draw again, from the query results a --keep DIR run saved (DIR/data.json)")
    args = parser.parse_args()
    if args.redraw:
        saved = json.loads((args.redraw / "data.json").read_text())
        panels = {int(k): v for k, v in saved["panels"].items()}
        draw(json.loads(DASHBOARD.read_text()), panels, saved["start"], saved["end"], args.out)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(args.out, args.keep))
