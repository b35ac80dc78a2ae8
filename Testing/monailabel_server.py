"""A real MONAI Label server for the service tests, in its own virtual environment.

``MonaiLabelServer`` starts ``monailabel start_server`` with the test app of
``Testing/monailabel/app`` on 127.0.0.1 on a free port, with private TMPDIR,
MONAI_LABEL_SESSION_PATH and studies folders, waits until ``/info/`` answers, and can kill or
stop it. The venv (``.venv-monailabel``) is made by ``Testing/monailabel/setup_monailabel.sh``
(called here when missing or out of date; cached otherwise). Every infer appends a line to
``infer_log`` (the app reads $VSP_TEST_INFER_LOG), so tests can count submits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "Testing" / "monailabel" / "app"
SETUP = ROOT / "Testing" / "monailabel" / "setup_monailabel.sh"
VENV = Path(os.environ.get("VSP_MONAILABEL_VENV", ROOT / ".venv-monailabel"))


def ensure_venv() -> Path:
    """The MONAI Label venv, made (or checked up to date) by the setup script."""
    result = subprocess.run(["bash", str(SETUP), str(VENV)], capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"setup_monailabel.sh failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return VENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MonaiLabelServer:
    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder)
        self.studies = self.folder / "studies"
        self.infer_log = self.folder / "infers.log"
        self.log_file = self.folder / "server.log"
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def infer_count(self) -> int:
        return len(self.infer_log.read_text().splitlines()) if self.infer_log.exists() else 0

    def start(self, timeout_s: float = 120.0) -> MonaiLabelServer:
        venv = ensure_venv()
        for name in ("studies", "tmp", "sessions"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("VIRTUAL_ENV", "PYTHON", "MONAI_LABEL"))
        }
        env.update(
            PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            TMPDIR=str(self.folder / "tmp"),
            MONAI_LABEL_SESSION_PATH=str(self.folder / "sessions"),
            VSP_TEST_INFER_LOG=str(self.infer_log),
        )
        command = [
            str(venv / "bin" / "monailabel"), "start_server", "--app", str(APP), "--studies", str(self.studies),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MONAI Label exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/info/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"MONAI Label did not answer within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def add_image(self, source: Path, image_id: str) -> str:
        """Put a volume into the server's datastore (the studies folder) and wait until listed."""
        suffix = ".nrrd" if source.name.endswith(".nrrd") else ".nii.gz"
        shutil.copy(source, self.studies / f"{image_id}{suffix}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = requests.get(self.url + "/datastore/?output=all", timeout=5)
            if answer.ok and image_id in answer.text:
                return image_id
            time.sleep(0.5)
        raise RuntimeError(f"image {image_id} did not appear in the datastore")
