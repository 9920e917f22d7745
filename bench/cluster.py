"""A SeaweedFS cluster on 127.0.0.1 for ``bench/run.py --cluster``.

:class:`WeedCluster` is :class:`s3fs_mount.localserver.LocalS3Server` (its identities file,
ports, readiness check by a signed request, socket clean-up and start/retry loop) with
the one ``weed server`` process replaced by separate processes, as a real deployment
has them: a master (``-defaultReplication``, by default ``001``: every volume has a
second copy on another server), three volume servers, a filer and the S3 gateway.
Each is started and stopped by its PID; :meth:`WeedCluster.kill_volume` SIGKILLs one
volume server, for the run that loses one mid-way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from s3fs_mount.localserver import HOST, LocalS3Server, ServerError, find_weed, free_ports

log = logging.getLogger(__name__)


class WeedCluster(LocalS3Server):
    """A master, ``volumes`` volume servers, a filer and the S3 gateway, each its own ``weed``.

    Usage as :class:`LocalS3Server`: ``start(ready)``, ``endpoint``, ``access_key``,
    ``secret_key``, ``ports["master"]``, ``stop(kill=True)``; besides, :meth:`kill_volume`.
    The logs go to ``weed-NAME.log`` beside ``log_path``.
    """

    def __init__(
        self, data_dir: str, *args: Any, volumes: int = 3, replication: str = "001", **kw: Any
    ) -> None:
        """Prepare (not start) the cluster; its data goes under ``data_dir``.

        The other arguments are :class:`LocalS3Server`'s (``volume_max``: per volume server, 500).
        """
        kw.setdefault("volume_max", 500)
        super().__init__(data_dir, *args, **kw)
        self.volumes = volumes
        self.replication = replication
        self.log_dir = self.log_path.parent
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # by name; only the caller's thread

    def names(self) -> list[str]:
        """The processes, in start order: master, volume0.., filer, s3."""
        return ["master", *("volume%d" % i for i in range(self.volumes)), "filer", "s3"]

    def _choose_ports(self) -> dict[str, int]:
        wanted = [n + suffix for n in self.names() for suffix in ("", ".grpc")]
        return dict(zip(wanted, free_ports(len(wanted)), strict=True))

    def addr(self, name: str) -> str:
        """``127.0.0.1:PORT.GRPCPORT``, as weed's -master and -filer flags take it."""
        return "%s:%d.%d" % (HOST, self.ports[name], self.ports[name + ".grpc"])

    def commands(self) -> dict[str, list[str]]:
        """Each process's argv (ports must have been chosen)."""
        weed, p, d = find_weed(), self.ports, self.data_dir
        bind = ["-ip=%s" % HOST, "-ip.bind=%s" % HOST]
        cmds = {
            "master": [
                weed,
                "master",
                *bind,
                "-port=%d" % p["master"],
                "-port.grpc=%d" % p["master.grpc"],
                "-mdir=%s" % (d / "master"),
                "-volumeSizeLimitMB=%d" % self.volume_size_mb,
                "-defaultReplication=%s" % self.replication,
                "-electionTimeout=1s",
                "-telemetry=false",
            ],
        }
        for i in range(self.volumes):
            name = "volume%d" % i
            cmds[name] = [
                weed,
                "volume",
                *bind,
                "-port=%d" % p[name],
                "-port.grpc=%d" % p[name + ".grpc"],
                "-dir=%s" % (d / name),
                "-max=%d" % self.volume_max,
                "-master=%s" % self.addr("master"),
                "-preStopSeconds=0",
            ]
        cmds["filer"] = [
            weed,
            "filer",
            *bind,
            "-port=%d" % p["filer"],
            "-port.grpc=%d" % p["filer.grpc"],
            "-master=%s" % self.addr("master"),
            "-defaultStoreDir=%s" % (d / "filer"),
            "-defaultReplicaPlacement=%s" % self.replication,
        ]
        cmds["s3"] = [
            weed,
            "s3",
            *bind,
            "-port=%d" % p["s3"],
            "-port.grpc=%d" % p["s3.grpc"],
            "-filer=%s" % self.addr("filer"),
            "-config=%s" % self.identities_path,
            "-port.iceberg=0",
            "-port.lance=0",
            "-autoCreateBucket=false",
            "-allowDeleteBucketNotEmpty=false",
        ]
        return cmds

    def command(self) -> list[str]:
        """The S3 gateway's argv (the one process :class:`LocalS3Server` would have)."""
        return self.commands()["s3"]

    def log_of(self, name: str) -> Path:
        return self.log_dir / ("weed-%s.log" % name)

    def _launch(self) -> None:
        self.ports = self._choose_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        for name, cmd in self.commands().items():
            (self.data_dir / name).mkdir(exist_ok=True)
            log.info("starting %s", " ".join(cmd))
            with open(self.log_of(name), "ab") as logf:
                self.procs[name] = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir / name,
                    start_new_session=True,
                )
        self._proc = self.procs["s3"]  # what LocalS3Server's pid and readiness loop watch

    def _nodes(self) -> list[dict[str, object]]:
        """The master's data nodes (``/dir/status``: each with ``Url`` and ``Volumes``)."""
        url = "http://%s:%d/dir/status" % (HOST, self.ports["master"])
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            topo = json.load(resp).get("Topology", {})
        return [
            node
            for dc in topo.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]

    def data_nodes(self) -> int:
        """How many volume servers the master knows now."""
        return len(self._nodes())

    def volumes_per_server(self) -> dict[str, int]:
        """Volume replicas each live volume server holds, as the master reports them."""
        by_port = {"%s:%d" % (HOST, self.ports["volume%d" % i]): "volume%d" % i for i in range(self.volumes)}
        return {
            by_port.get(str(n.get("Url")), str(n.get("Url"))): int(str(n.get("Volumes", 0)))
            for n in self._nodes()
        }

    def _volume_server_registered(self) -> bool:
        """All volume servers registered (and no process has died meanwhile)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ServerError(
                    "weed %s exited (code %s) while starting; log %s"
                    % (name, proc.returncode, self.log_of(name))
                )
        try:
            return self.data_nodes() >= self.volumes
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def is_running(self) -> bool:
        return bool(self.procs) and all(
            p.poll() is None for n, p in self.procs.items() if n not in self.killed
        )

    @property
    def killed(self) -> set[str]:
        """Volume servers :meth:`kill_volume` has killed."""
        return {
            n for n, p in self.procs.items() if n.startswith("volume") and p.returncode == -signal.SIGKILL
        }

    def kill_volume(self, index: int) -> int:
        """SIGKILL volume server ``index``; returns its PID."""
        proc = self.procs["volume%d" % index]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.info("killed volume%d (pid %d)", index, proc.pid)
        return proc.pid

    def stop(self, kill: bool = False, timeout: float = 30) -> None:
        """Stop every process by its PID, the S3 gateway first; see :meth:`LocalS3Server.stop`."""
        for name in reversed(self.names()):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._cleanup_sockets()
