"""The MLflow UI in a real browser: a small sweep logged to `mlflow server`, opened in headless Chromium.

Chromium is Debian's `chromium` package (.ci/run installs it); without it the module is skipped.
It is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no port, no extra package),
and each check waits for the rendered page itself rather than a fixed virtual-time budget:
`--dump-dom` never shows the charts, because the UI draws a chart only once it is seen on screen
(an IntersectionObserver), which a DOM dump without frames never is. No request leaves 127.0.0.1:
--host-resolver-rules makes every other host name unresolvable.
"""

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .support import cli, history_steps, mlflow_server, runs_in, stop_group

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium package "
                              "(apt-get install -y chromium; .ci/run does it when run as root)"),
]
# The flags this machine needs (see the env notes): no sandbox as root, no GPU, no background traffic.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,1000"]
SWEEP = ["init=default,kaiming", "seed=0,1"]
NAMES = ["mlp-default-digits-s0", "mlp-default-digits-s1", "mlp-kaiming-digits-s0", "mlp-kaiming-digits-s1"]
EPOCHS, STEPS_PER_EPOCH = 2, 2  # 256 examples in batches of 128


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: JSON messages ending in NUL,
    commands on the child's fd 3, replies and events on its fd 4. One page at a time."""

    def __init__(self, profile: Path):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def as_fds_3_and_4():  # in the child, before exec; dup first so that 3 and 4 are free to take
            read, write = os.dup(to_child), os.dup(from_child)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
                                     preexec_fn=as_fds_3_and_4, close_fds=False, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(profile.parent / "chromium.log", "w"))
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id, self.session = b"", 0, None

    def send(self, method: str, **params):
        """Send one command to the page (or to the browser before a page is open); its result."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed its pipe (exit code {self.proc.poll()})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # events and other replies are not needed here
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        self.session = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll a JavaScript expression in the page until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        """Ask the browser to quit; stop it by its PID if it does not."""
        try:
            self.session = None
            self.send("Browser.close")
            self.proc.wait(10)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                stop_group(self.proc, grace=5)
            os.close(self._out)
            os.close(self._in)


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A tracking server holding the runs of a 4-job sweep; yields (server URI, experiment id)."""
    root = tmp_path_factory.mktemp("ui")
    with mlflow_server(root / "server") as uri:
        done = cli("-m", *SWEEP, "model=mlp", "dataset.train_size=256", f"trainer.epochs={EPOCHS}",
                   "trainer.progress=false", f"tracking.uri={uri}", "tracking.experiment=ui", cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        yield uri, MlflowClient(uri).get_experiment_by_name("ui").experiment_id


@pytest.fixture
def browser(tmp_path) -> Iterator[Chromium]:
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp_path))  # a new, empty profile
    chromium = Chromium(profile)
    try:
        yield chromium
    finally:
        chromium.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_experiment_page_lists_every_run_by_name(ui, browser, tmp_path):
    uri, experiment = ui
    browser.open(f"{uri}/#/experiments/{experiment}/runs")
    names = json.dumps(NAMES)
    listed = browser.wait_for(f"{names}.every(name => document.body.innerText.includes(name))")
    shot = browser.screenshot(tmp_path / "experiment.png")
    text = browser.send("Runtime.evaluate", expression="document.body.innerText")["result"]["value"]
    assert listed, f"runs missing from the experiment page (screenshot {shot}):\n{text[:2000]}"


def test_run_page_shows_the_train_loss_chart(ui, browser, tmp_path):
    uri, experiment = ui
    [run] = [r for r in runs_in(uri, "ui") if r.info.run_name == NAMES[0]]
    steps = history_steps(uri, run.info.run_id, "train/loss")
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    browser.open(f"{uri}/#/experiments/{experiment}/runs/{run.info.run_id}/model-metrics")
    # The page has a chart per metric (act_std/*, grad_norm/*, ... first) and draws only those on screen:
    # type the metric into the page's own search box, as a user would.
    search = "document.querySelector('input[placeholder=\"Search metric charts\"]')"
    assert browser.wait_for(f"!!{search}"), "no metric search box on the run page"
    browser.send("Runtime.evaluate", expression=f"{search}.focus()")
    browser.send("Input.insertText", text="train/loss")
    # A chart card is a Plotly plot: its legend names the run and the metric, one marker per point.
    charts = browser.wait_for("""(() => {
        const charts = Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => {
            let card = plot;
            for (let i = 0; i < 6 && card.parentElement; i++) card = card.parentElement;
            return {text: card.innerText, points: plot.querySelectorAll('.scatterlayer path.point').length};
        });
        return charts.some(c => c.text.includes('(train/loss)') && c.points > 0) && charts;
    })()""")
    shot = browser.screenshot(tmp_path / "run.png")
    assert charts, f"no train/loss chart on the run page (screenshot {shot})"
    [loss] = [c for c in charts if f"{NAMES[0]} (train/loss)" in c["text"]]
    assert loss["points"] == len(steps)  # every logged step is drawn
    assert shot.stat().st_size > 20_000  # a real picture, not a blank page
