"""The MLflow UI in a real browser: a small sweep and its analysis logged to `mlflow server`, opened in
headless Chromium the way a user opens them (docs/mlflow.md, "The same runs in the MLflow UI").

Chromium is Debian's `chromium` package (.ci/run installs it); without it the module is skipped.
It is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no port, no extra package),
and each check waits for the rendered page itself rather than a fixed virtual-time budget:
`--dump-dom` never shows the charts, because the UI draws a chart only once it is seen on screen
(an IntersectionObserver), which a DOM dump without frames never is; so a chart that is drawn is one
on the first screen. No request leaves 127.0.0.1: --host-resolver-rules makes every other host name
unresolvable. Each test starts with a new, empty browser profile, as a first visit does.

Every page checked is also a PNG in the test's tmp folder; with INITBENCH_SCREENS=DIR set they are
copied to DIR as well, to look at (e.g. INITBENCH_SCREENS=/tmp/initbench-screens).
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from initbench.testing import (
    ROOT,
    cli,
    history_steps,
    initbench_env,
    mlflow_server,
    parent_runs_in,
    runs_in,
    stop_group,
)

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
EPOCHS, STEPS_PER_EPOCH = 2, 1  # 128 examples in batches of 128
VITALS = ["vitals/act_std", "vitals/backprop_std", "vitals/grad_norm"]  # the diagnostics' chart sections
# The runs table's columns in the docs' view: three of the summary metrics in; three attributes out, for room.
SUMMARY_COLUMNS = ["whole_run/test_acc_at_best_val", "whole_run/best_val_acc", "whole_run/diverged"]
MOVED_ASIDE = ["Dataset", "Source", "Models"]
TREE_TITLE = "span.du-bois-light-tree-title"  # an entry of the Columns menu (a tree of checkboxes)
SCREENS_ENV = "INITBENCH_SCREENS"  # a folder that every screenshot is copied to as well
# The sidebar's switch between MLflow's two UIs ("GenAI" | "Model training"); the browser remembers it
# (localStorage), and `?workflowType=machine_learning` in a page's address is what it sets.
TRAINING_UI = "workflowType=machine_learning"
# What the UI opened an experiment on: the part of the address after /experiments/<id>/ (runs, overview...).
LANDED = r"(location.hash.match(/^#\/experiments\/[^/?]+\/([a-z-]+)/) || [])[1]"
# The table's rows in order, one entry per run (a row is split over pinned and scrolled parts): its run
# id, name, the left edge of the name (a child run's is indented), and all its text.
ROWS = """(() => {
    const rows = new Map();
    for (const part of document.querySelectorAll('[role=row][row-id]')) {
        const id = part.getAttribute('row-id');
        const row = rows.get(id) || {id, index: +part.getAttribute('row-index'), text: ''};
        row.text += part.innerText + '\\n';
        const cell = part.querySelector('[col-id="attributes.`Run Name`"]');
        const link = cell && cell.querySelector('a');
        if (link) {
            row.name = link.innerText.trim();
            row.left = link.getBoundingClientRect().left;
        }
        rows.set(id, row);
    }
    return [...rows.values()].sort((a, b) => a.index - b.index);
})()"""
# The chart view's sections in order (title, number of charts): each header reads "title (n) Add chart".
SECTIONS = r"[...document.body.innerText.matchAll(/^([^\n]+)\n\((\d+)\)\nAdd chart$/gm)].map(m => [m[1], +m[2]])"
# The drawn charts (Plotly plots; the UI draws one only once it is on screen): the text of its card
# (title, legend: "<run name> (<metric>)"), its markers (one per point) and where it is in the window.
CHARTS = """Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => {
    let card = plot;
    while (card.parentElement && card.parentElement.querySelectorAll('.js-plotly-plot').length === 1)
        card = card.parentElement;
    const box = plot.getBoundingClientRect();
    return {text: card.innerText, points: plot.querySelectorAll('.scatterlayer path.point').length,
            top: box.top, bottom: box.bottom, window: window.innerHeight};
})"""


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

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (None where it throws)."""
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll a JavaScript expression in the page until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.25)

    def click(self, selector: str, text: str | None = None) -> bool:
        """Click, as a user would, the last element that matches the CSS `selector` (and whose text is
        `text`, if given: the innermost such element); whether there was one."""
        return bool(self.evaluate(f"""(() => {{
            const text = {json.dumps(text)};
            const found = Array.from(document.querySelectorAll({json.dumps(selector)}))
                .filter(e => text === null || (e.innerText || '').trim() === text);
            if (!found.length) return false;
            found[found.length - 1].click();
            return true;
        }})()"""))

    def press(self, selector: str, text: str) -> bool:
        """Press and release the mouse on the last element that matches `selector` and whose text is
        `text`, as a pointer does (menus that open on pointerdown ignore a scripted click); whether there was one."""
        centre = self.evaluate(f"""(() => {{
            const found = Array.from(document.querySelectorAll({json.dumps(selector)}))
                .filter(e => (e.innerText || '').trim() === {json.dumps(text)}).pop();
            if (!found) return null;
            const box = found.getBoundingClientRect();
            return [box.x + box.width / 2, box.y + box.height / 2];
        }})()""")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased") if centre else ():
            self.send("Input.dispatchMouseEvent", type=kind, x=centre[0], y=centre[1], button="left", clickCount=1)
        return bool(centre)

    def escape(self) -> None:
        """Press Escape (closes an open menu)."""
        self.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27)

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


@dataclass
class Sweep:
    """A sweep logged to a tracking server, and analyzed: where it is and what the pages must show."""

    uri: str
    experiment: str  # its id
    sweep: str
    parent: str  # the run id of `sweep-<sweep>`
    jobs: dict[str, str]  # run name -> run id
    digests: dict[str, str]  # context (train, val, test) -> the digest of that dataset input, the same for every job
    ranked: list[str]  # the inits in the order of the analysis' table
    files: list[str]  # the analysis' files, as logged under analysis/


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[Sweep]:
    """A tracking server holding a 4-job sweep and its analysis, as the docs' MLflow page makes them."""
    root = tmp_path_factory.mktemp("ui")
    with mlflow_server(root / "server") as uri:
        done = cli("-m", *SWEEP, "model=mlp", "dataset.train_size=128", f"trainer.epochs={EPOCHS}",
                   "trainer.progress=false", f"tracking.uri={uri}", "tracking.experiment=ui", cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        out = root / "results"
        analyzed = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), "--tracking-uri", uri,
                                   "--experiment", "ui", "--out", str(out)],
                                  cwd=root, env=initbench_env(root), capture_output=True, text=True, timeout=300)
        assert analyzed.returncode == 0, analyzed.stderr[-3000:]
        [parent] = parent_runs_in(uri, "ui")
        jobs = {r.info.run_name: r.info.run_id for r in runs_in(uri, "ui")}
        assert sorted(jobs) == NAMES
        inputs = MlflowClient(uri).get_run(jobs[NAMES[0]]).inputs.dataset_inputs
        digests = {next(t.value for t in i.tags if t.key == MLFLOW_DATASET_CONTEXT): i.dataset.digest for i in inputs}
        yield Sweep(uri, parent.info.experiment_id, parent.data.tags["initbench.sweep"], parent.info.run_id, jobs,
                    digests, pd.read_csv(out / "summary.csv").init.tolist(),
                    sorted([p.name for p in out.iterdir()] + ["summary.json"]))


@pytest.fixture
def browser(tmp_path) -> Iterator[Chromium]:
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp_path))  # a new, empty profile
    chromium = Chromium(profile)
    try:
        yield chromium
    finally:
        chromium.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shoot(browser, tmp_path):
    """shoot(name): a screenshot of the page as tmp_path/name, copied to $INITBENCH_SCREENS too."""

    def screenshot(name: str) -> Path:
        shot = browser.screenshot(tmp_path / name)
        if os.environ.get(SCREENS_ENV):
            folder = Path(os.environ[SCREENS_ENV])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, folder / name)
        return shot

    return screenshot


def close_assistant(browser: Chromium) -> None:
    """Close the "MLflow Assistant" panel that opens on a first visit (it takes a quarter of the width)."""
    browser.click('button[data-component-id="mlflow.assistant.chat_panel.close"]')


def chart(charts: list[dict], legend: str) -> dict:
    """The drawn chart whose legend names `legend` ("<run> (<metric>)")."""
    [found] = [c for c in charts if legend in c["text"]]
    return found


@pytest.mark.xfail(reason="MLflow 3.17's UI opens an experiment on the view of the browser's GenAI / Model "
                          "training switch (GenAI on a first visit), not on the one its mlflow.experimentKind "
                          "tag names", strict=False)
def test_experiment_link_opens_on_the_runs(ui, browser, shoot):
    """The experiment's own address (the one MLflow prints, and the experiment list links to), in a
    browser that never switched: initbench tags the experiment custom_model_development for this."""
    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}")
    landed = browser.wait_for(LANDED)
    browser.wait_for("document.querySelector('[role=row][row-id]') || "
                     "document.body.innerText.includes('No data available')", timeout=30)
    shot = shoot("experiment-link.png")
    assert landed == "runs", f"the experiment opened on {landed!r}, not on its runs (screenshot {shot})"


def test_sweep_is_one_row_with_its_jobs_as_children(ui, browser, shoot):
    """The docs' MLflow walk-through: the experiment, switched to "Model training", shows the sweep as one row;
    expanded, its four jobs under it with their datasets; its chart view opens on test/ and train/."""
    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}")
    assert browser.wait_for(LANDED), "the experiment page did not open"
    assert browser.click("span", "Model training"), "no GenAI / Model training switch in the sidebar"
    assert browser.wait_for(f"{LANDED} === 'runs'"), "the Model training switch did not open the runs"
    parent = f"sweep-{ui.sweep}"
    rows = browser.wait_for(f"(rows => rows.some(r => r.name === {json.dumps(parent)}) && rows)({ROWS})")
    shot = shoot("experiment.png")
    assert [r.get("name") for r in rows or []] == [parent], f"not one row for the sweep (screenshot {shot})"
    assert browser.wait_for(f"document.body.innerText.includes('{len(NAMES) + 1} matching runs')")  # children too

    # The sweep's row expands to the jobs, indented under it.
    assert browser.click(f'[role=row][row-id="{ui.parent}"] [col-id="attributes.`Run Name`"] button')
    rows = browser.wait_for(f"(rows => rows.filter(r => r.name).length === {len(NAMES) + 1} && rows)({ROWS})")
    shot = shoot("experiment-expanded.png")
    assert rows, f"the sweep's row did not expand to its {len(NAMES)} jobs (screenshot {shot})"
    named = [r for r in rows if r.get("name")]
    assert named[0]["name"] == parent and sorted(r["name"] for r in named[1:]) == NAMES
    assert {r["id"] for r in named[1:]} == set(ui.jobs.values())
    assert all(r["left"] > named[0]["left"] for r in named[1:]), "the jobs are not indented under the sweep"
    for job in named[1:]:  # the Dataset column: the data it trained, was validated and tested on
        for context, digest in ui.digests.items():  # (in the page; a narrow column shows "+N" for some)
            assert f"digits ({digest})\n{context.capitalize()}" in job["text"], (context, job["text"])

    # The chart view of the runs shown: loss and accuracy first, the diagnostics after them.
    assert browser.click('input[type=radio][value="CHART"]'), "no chart view switch"
    charts = browser.wait_for(f"(charts => charts.some(c => c.text.includes('(train/loss)') && c.points) "
                              f"&& charts)({CHARTS})")
    sections = browser.evaluate(SECTIONS)
    shot = shoot("experiment-charts.png")
    assert charts, f"no train/loss chart drawn on the experiment's chart view (screenshot {shot})"
    assert [title for title, _ in sections[:2]] == ["test", "train"], sections  # then val/, where logged
    assert set(VITALS) <= {title for title, _ in sections[2:]}, sections
    loss = chart(charts, f"{NAMES[0]} (train/loss)")
    assert all(f"{name} (train/loss)" in loss["text"] for name in NAMES)  # one line per job...
    assert loss["points"] == len(NAMES) * EPOCHS * STEPS_PER_EPOCH  # ...with every step

    # The switch is remembered: the experiment's own address now opens on the runs.
    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}")
    assert browser.wait_for(LANDED) == "runs"


def test_sweep_run_holds_the_analysis(ui, browser, shoot):
    """The sweep's parent run: the ranking as its description, whole on the first screen (its last
    cell is on top where it is drawn: not folded away behind "Show more"), its jobs as child runs, the
    analysis' files under Artifacts > analysis, summary.json shown as a table."""
    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}/runs/{ui.parent}?{TRAINING_UI}")
    ranked = browser.wait_for("""(() => {  // the init column of the first table that has one
        for (const table of document.querySelectorAll('table')) {
            const column = Array.from(table.querySelectorAll('thead th')).map(c => c.innerText.trim()).indexOf('init');
            if (column >= 0)
                return Array.from(table.querySelectorAll('tbody tr')).map(row => row.cells[column].innerText.trim());
        }
    })()""")
    children = browser.wait_for(f"{json.dumps(NAMES)}.every(name => document.body.innerText.includes(name))")
    text = browser.evaluate("document.body.innerText")
    close_assistant(browser)
    time.sleep(0.5)  # the panel closes
    shown = """(row => {  // whether a row of the table lies inside the box that folds the description
        const cell = [...document.querySelectorAll(`table tbody tr:nth-child(${row}) td:last-child`)].pop();
        let fold = cell.parentElement;
        while (fold && getComputedStyle(fold).overflowY !== 'hidden') fold = fold.parentElement;
        const bottom = fold ? fold.getBoundingClientRect().bottom : window.innerHeight;
        return cell.getBoundingClientRect().bottom <= Math.min(bottom, window.innerHeight);
    })"""
    rows = [browser.evaluate(f"{shown}({row})") for row in range(1, len(ranked) + 1)]
    shot = shoot("sweep-run.png")
    assert ranked == ui.ranked, f"the description is not the ranked table (screenshot {shot}):\n{text[:3000]}"
    # The UI folds a description after a few lines: the table comes first, and a 2-row one is whole.
    assert all(rows), f"the description does not open on its table's rows (screenshot {shot})"
    assert f"Sweep {ui.sweep} of experiment ui" in text  # the table's caption
    assert children and "Child runs" in text, f"the jobs are not listed as its child runs (screenshot {shot})"

    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}/runs/{ui.parent}/artifacts?{TRAINING_UI}")
    assert browser.wait_for("document.body.innerText.includes('analysis')")
    browser.click("div", "analysis")  # the folder: unfolds its files
    files = json.dumps(ui.files)
    listed = browser.wait_for(f"{files}.every(f => document.body.innerText.includes(f))")
    browser.click("div", "summary.json")
    table = browser.wait_for("document.body.innerText.includes('View as table') && "
                             "document.body.innerText.includes('n_seeds')")  # a column of the summary
    shot = shoot("sweep-artifacts.png")
    assert listed, f"analysis/ does not list {ui.files} (screenshot {shot})"
    assert table, f"analysis/summary.json is not shown as a table (screenshot {shot})"


def cell(row_id: str, column: str) -> str:
    """JavaScript: the text of the runs table's cell in row `row_id` and column `column` (null if none)."""
    selector = f'[role=row][row-id="{row_id}"] [col-id="{column}"]'
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText"


def test_runs_table_shows_summary_metrics_and_groups_by_init(ui, browser, shoot):
    """docs/mlflow.md's view of a sweep without the analysis: the runs table with whole_run/* columns
    (Columns), grouped by init.name (Group by): a row per init, holding the mean of its runs' values."""
    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}/runs?{TRAINING_UI}")
    assert browser.wait_for("!!document.querySelector('[role=row][row-id]')"), "the runs table did not open"
    close_assistant(browser)
    assert browser.click("button", "Columns")
    for title in [*SUMMARY_COLUMNS, *MOVED_ASIDE]:
        assert browser.wait_for(f"[...document.querySelectorAll('{TREE_TITLE}')].some(e => e.innerText === "
                                f"{json.dumps(title)})"), f"the Columns menu has no {title}"
        browser.click(TREE_TITLE, title)
    browser.escape()
    columns = [f"metrics.`{name}`" for name in SUMMARY_COLUMNS]
    shown = browser.wait_for(f"(ids => {json.dumps(columns)}.every(c => ids.includes(c)) && ids)"
                             "([...document.querySelectorAll('[col-id]')].map(e => e.getAttribute('col-id')))")
    assert shown, "the summary metrics are not columns of the runs table"
    assert not any(f"attributes.`{name}`" in shown for name in MOVED_ASIDE)

    assert browser.press("button", "Group by"), "no Group by menu"
    assert browser.wait_for("[...document.querySelectorAll('[role=menuitemcheckbox]')]"
                            ".some(e => e.innerText.trim() === 'init.name')"), "Group by offers no init.name"
    browser.click("[role=menuitemcheckbox]", "init.name")
    browser.escape()
    inits = sorted({name.split("-")[1] for name in NAMES})
    rows = browser.wait_for(f"(rows => {json.dumps(inits)}.every(i => rows.some(r => r.id === 'param.init.name.' + i)) "
                            f"&& rows)({ROWS})")
    shot = shoot("runs-grouped-by-init.png")
    assert rows, f"the runs are not grouped by init.name (screenshot {shot})"
    client, metric = MlflowClient(ui.uri), SUMMARY_COLUMNS[0]
    for init in inits:
        group = f"param.init.name.{init}"
        members = sorted(r["name"] for r in rows if r["id"].startswith(group + ".") and r.get("name"))
        assert members == [n for n in NAMES if f"-{init}-" in n], (init, members)
        shown = browser.evaluate(cell(group, f"metrics.`{metric}`"))
        values = [client.get_run(ui.jobs[name]).data.metrics[metric] for name in members]
        assert shown and shown.endswith("(average)"), (group, shown)
        assert float(shown.split()[0]) == pytest.approx(sum(values) / len(values), rel=1e-6), (init, shown, values)


def test_job_chart_view_opens_on_loss_and_accuracy(ui, browser, shoot):
    """A job's Model metrics tab as first opened: sections test, train, then vitals/...; the
    train/loss and test/acc charts drawn on the first screen (no scrolling, no search)."""
    name = NAMES[0]
    steps = history_steps(ui.uri, ui.jobs[name], "train/loss")
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    browser.open(f"{ui.uri}/#/experiments/{ui.experiment}/runs/{ui.jobs[name]}/model-metrics?{TRAINING_UI}")
    charts = browser.wait_for(f"""(charts => ['train/loss', 'test/acc'].every(
        metric => charts.some(c => c.text.includes('{name} (' + metric + ')') && c.points)) && charts)({CHARTS})""")
    sections = browser.evaluate(SECTIONS)
    shot = shoot("job-charts.png")
    assert charts, f"train/loss and test/acc not both drawn on the first screen (screenshot {shot})"
    titles = [title for title, _ in sections]
    assert titles[:2] == ["test", "train"] and sections[0][1] == sections[1][1] == 2, sections  # acc, loss
    assert set(VITALS) <= set(titles[2:]), sections  # after val/, where logged
    for metric in ("train/loss", "test/acc"):
        drawn = chart(charts, f"{name} ({metric})")
        assert 0 <= drawn["top"] and drawn["bottom"] <= drawn["window"], f"{metric} is not on the first screen: {drawn}"
    assert chart(charts, f"{name} (train/loss)")["points"] == len(steps)  # every logged step is drawn
    assert not any("vitals/" in c["text"] for c in charts)  # the diagnostics are below the first screen
    assert shot.stat().st_size > 20_000  # a real picture, not a blank page
