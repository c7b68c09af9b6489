"""`segvae run --launcher slurm` against a real one-node SLURM cluster (scripts/slurm_local_cluster.sh):
munged, slurmctld and slurmd on this machine. `.ci/run` installs the Debian packages and starts it;
elsewhere the fixture starts one when the daemons are installed and this is root, and skips with the
reason otherwise. Under CI=true a cluster that cannot start is a failure, never a skip.

The plan is tiny (1 epoch, 4 channels, 32 px, a few bench queries) so that both launchers run it in
about a minute each on 2 cores; the array, the afterok order, the artifacts and the fault paths are real.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.errors import UserError
from tests.helpers import REPO, skip_unless_ci, without_timings

EXPERIMENTS = ["unet-mp-tr-bce", "cvae-mnist"]


# ----------------------------------------------------------------------------- the cluster
def _sinfo_ok() -> bool:
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and r.stdout.strip() != ""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a running one-node cluster: CI's (SLURM_CONF set by .ci/run), else one started here."""
    if os.environ.get("SLURM_CONF") and _sinfo_ok():
        yield os.environ["SLURM_CONF"]
        return
    folder = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm_local_cluster.sh"
    r = subprocess.run(["bash", str(script), "start", str(folder)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        reason = f"no SLURM cluster: {script.name} could not start one: {(r.stderr or r.stdout).strip()[-500:]}"
        print(reason)
        skip_unless_ci(reason)  # under CI=true a failure
    conf = r.stdout.strip().split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        subprocess.run(["bash", str(script), "stop", str(folder)], capture_output=True, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A preset of the smallest settings, and the environment the jobs inherit (sbatch exports it)."""
    import harness.pipeline as pipeline
    from harness.estimate import Estimate

    monkeypatch.setattr(pipeline, "estimate_plan", lambda plan, retrain, costs=None: Estimate())  # CI time
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.chdir(tmp_path)  # the jobs' working folder (#SBATCH --chdir) is the submitter's
    monkeypatch.setitem(pipeline.PRESETS, "tiny", pipeline.Preset(
        "tiny", segmentation={"epochs": 1, "image_size": 32, "batch_size": 4, "mixed_precision": "no"},
        cvae={"epochs": 1, "batch_size": 32}, unet_channels=4, cvae_channels=4, judge_epochs={"mnist": 1},
        export={},
        bench={"batch_sizes": [1], "rounds": 3, "min_queries": 2, "min_duration": 0.01, "warmup": 0,
               "accuracy_samples": 4, "backends": ["torch-eager", "ort-fp32"], "scenarios": ["single-stream"]}))
    return pipeline


def _slurm_config(tmp_path, **more):
    """Through the config file, as a user would: poll every second (CI time), no --exclusive bench."""
    from harness.launchers import launcher_config

    path = tmp_path / "slurm.json"
    path.write_text(json.dumps({"poll_seconds": 0.5, "bench_sbatch_args": [], **more}))
    return launcher_config("slurm", path)


def _steps(out: Path) -> dict:
    return json.loads((out / "pipeline.json").read_text())["steps"]


def _times(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    r = subprocess.run(["squeue", "-h", "-r", "--states=all", "-j", ",".join({j.split("_")[0] for j in job_ids}),
                        "-o", "%i|%S|%e"], capture_output=True, text=True, check=True)
    return {i: (s, e) for i, s, e in (line.split("|") for line in r.stdout.split())}


# ----------------------------------------------------------------------------- the artifacts
def _files(out: Path) -> set[str]:
    """Every file a plan leaves, but the launcher's own (OUT/slurm/) and checkpoints' random states."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
            and p.relative_to(out).parts[0] != "slurm" and "checkpoints" not in p.relative_to(out).parts}


BENCH_TIMING = {"latency_ms", "samples_per_s", "speedup", "speedup_p50", "gflops_per_s", "pct_of_peak", "peak_rss_mb",
                "rounds", "env", "peak", "wall_seconds", "validity", "queries", "duration_s", "load_seconds",
                "seconds", "started_unix", "created_unix", "command", "argv", "out", "judges", "run_dir", "run"}


def _strip(obj, keys):
    if isinstance(obj, dict):
        return {k: _strip(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_strip(v, keys) for v in obj]
    return obj


# not model_sha256: two exports of the same weights differ in bytes (torch.export writes its range
# constraints into the graph's metadata in no fixed order); _same_onnx compares the graphs instead
ACCURACY = ("run", "backend", "scenario", "batch_size", "run_config_hash", "accuracy_count", "dice",
            "iou", "dice_delta", "max_abs_err", "mean_abs_err", "judge_acc", "accuracy_pass")


def _same_onnx(a: Path, b: Path) -> bool:
    """The same operators in the same order and the same weights."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    ga, gb = onnx.load(str(a)).graph, onnx.load(str(b)).graph
    wa, wb = ({i.name: numpy_helper.to_array(i) for i in g.initializer} for g in (ga, gb))
    return ([n.op_type for n in ga.node] == [n.op_type for n in gb.node] and wa.keys() == wb.keys()
            and all(np.array_equal(wa[k], wb[k]) for k in wa))


def _accuracy(bench: dict) -> list:
    """Each result row's weights and accuracy: what must not depend on where the bench ran."""
    return [tuple(row.get(k) for k in ACCURACY) for row in bench["results"]]


# ----------------------------------------------------------------------------- end to end
def test_slurm_runs_the_plan_as_an_array_then_dependants_with_the_local_artifacts(slurm_cluster, tiny, tmp_path,
                                                                                  data_root):
    pipeline = tiny
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    pipeline.run_pipeline("tiny", data_root=data_root, experiments=EXPERIMENTS, out_dir=local)
    pipeline.run_pipeline("tiny", data_root=data_root, experiments=EXPERIMENTS, out_dir=slurm,
                          launcher=_slurm_config(tmp_path))
    _check_array_order_and_artifacts(local, slurm)


def _check_array_order_and_artifacts(local: Path, slurm: Path):
    steps = _steps(slurm)
    assert all(s["state"] == "completed" for s in steps.values()), steps
    trains = {k: s for k, s in steps.items() if k.startswith("train/")}
    (array,) = {s["job_id"].split("_")[0] for s in trains.values()}  # one array job...
    assert sorted(s["job_id"] for s in trains.values()) == [f"{array}_0", f"{array}_1"]  # ...of two tasks
    others = [s["job_id"] for k, s in steps.items() if k not in trains]
    assert len(set(others)) == len(others) == 5 and all("_" not in j for j in others)  # judge, 2 exports, bench, report
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    assert all(s["nodes"] == host for s in steps.values())
    for key, s in steps.items():  # the recorded script runs the recorded argv; the log is there
        assert Path(s["script"]).is_file() and Path(s["log"]).is_file(), key
        assert __import__("shlex").join(s["argv"]) in Path(s["script"]).read_text(), key
    when = _times([s["job_id"] for s in steps.values()])
    for key, s in steps.items():  # afterok: every job started after the jobs it reads ended
        for dep in s["after"]:
            assert when[s["job_id"]][0] >= when[steps[dep]["job_id"]][1], (key, dep, when)

    # the same argv ran, so the same artifacts: the same files, the same metrics up to timings
    assert _files(local) == _files(slurm)
    assert {"report.html", "report.md", "bench.json", "judges/mnist/judge.json",
            "unet-mp-tr-bce/onnx/model.onnx", "cvae-mnist/labelswap.json"} <= _files(slurm)
    for rel in sorted(_files(local)):
        # not pipeline.json, bench.json, peak.json (timings) nor run.json (provenance)
        if rel.endswith(".json") and rel not in ("pipeline.json", "bench.json", "peak.json") \
                and not rel.endswith("run.json"):
            a, b = (json.loads((d / rel).read_text()) for d in (local, slurm))
            assert _strip(without_timings(a), BENCH_TIMING) == _strip(without_timings(b), BENCH_TIMING), rel
    for rel in sorted(r for r in _files(local) if r.endswith(".onnx")):
        assert _same_onnx(local / rel, slurm / rel), rel
    bench = [json.loads((d / "bench.json").read_text()) for d in (local, slurm)]
    assert _accuracy(bench[0]) == _accuracy(bench[1]) and _accuracy(bench[0])
    pipe = [json.loads((d / "pipeline.json").read_text()) for d in (local, slurm)]
    assert [a[3:] for a in pipe[0]["argv"][1:]] == [
        [x.replace(str(slurm), str(local)) for x in a[3:]] for a in pipe[1]["argv"][1:]]


def test_scancel_stops_the_dependants_and_a_rerun_submits_only_the_rest(slurm_cluster, tiny, tmp_path, data_root):
    """Two UNets (no judge: less CI time). The first one's training runs long; it is requeued once it
    wrote a checkpoint (a preemption: it resumes from it) and then cancelled: its export, the bench and
    the report are stopped with a message naming the job and its log, while the other training and
    its export finish. The same call again reuses those and submits the first training (resumed), its
    export, the bench and the report."""
    pipeline = tiny
    pipeline.PRESETS["tiny"].segmentation["epochs"] = 30  # long enough to requeue and cancel mid-training
    experiments = ["unet-mp-tr-bce", "unet-sc-tr-bce"]
    out = tmp_path / "out"
    config = _slurm_config(tmp_path)
    unet = out / "unet-mp-tr-bce"
    error: list[BaseException] = []

    def run():
        try:
            pipeline.run_pipeline("tiny", data_root=data_root, experiments=experiments, out_dir=out, launcher=config)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            error.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    job = _wait(lambda: (out / "pipeline.json").is_file() and _steps(out)["train/unet-mp-tr-bce"].get("job_id"))
    _wait(lambda: (unet / "checkpoints" / "last").is_dir())
    log = Path(_steps(out)["train/unet-mp-tr-bce"]["log"])
    requeued_at = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    _wait(lambda: _start_now(job, log, requeued_at), timeout=60, every=0.5, explain=lambda: _slurm_story(job, log))
    _wait(lambda: "resumed from" in log.read_text(), explain=lambda: _slurm_story(job, log))
    subprocess.run(["scancel", job], check=True)
    thread.join(timeout=300)
    assert not thread.is_alive()

    assert len(error) == 1 and isinstance(error[0], UserError), error
    message = str(error[0])
    assert f"job {job} (train/unet-mp-tr-bce) ended CANCELLED" in message and str(log) in message
    assert "stopped its dependants: export/unet-mp-tr-bce, bench, report" in message
    first = _steps(out)
    assert first["train/unet-mp-tr-bce"]["state"] == "cancelled"
    assert {k: first[k]["state"] for k in ("export/unet-mp-tr-bce", "bench", "report")} == dict.fromkeys(
        ("export/unet-mp-tr-bce", "bench", "report"), "stopped")
    done = ("train/unet-sc-tr-bce", "export/unet-sc-tr-bce")
    assert all(first[k]["state"] == "completed" for k in done)
    assert "restart 1" in log.read_text()  # the requeued job ran again, with --resume appended by its script

    pipeline.run_pipeline("tiny", data_root=data_root, experiments=experiments, out_dir=out, launcher=config)
    second = _steps(out)
    for key in done:  # finished work is not submitted again
        assert second[key]["state"] == "reused" and second[key]["job_id"] == first[key]["job_id"], key
    for key in ("train/unet-mp-tr-bce", "export/unet-mp-tr-bce", "bench", "report"):
        assert second[key]["state"] == "completed" and second[key]["job_id"] != first[key]["job_id"], key
    assert second["train/unet-mp-tr-bce"]["argv"][-1] == "--resume"  # it continues from its checkpoint
    assert "resumed from" in Path(second["train/unet-mp-tr-bce"]["log"]).read_text()
    assert (out / "report.html").is_file()


def _start_now(job: str, log: Path, requeued_at: float) -> bool:
    """Once the requeued job waits (PENDING), let it start now rather than in 2 minutes; True once its
    second run began. Not within the requeue's second nor the next: slurmd revoked the job's credential
    at the requeue, with a time in whole seconds, and refuses a credential made in that same second
    (`cred->ctime <= revoked`): the launch fails and the job ends FAILED (CI saw it once)."""
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    if state == "PENDING" and time.time() >= int(requeued_at) + 2:
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    return "restart 1" in log.read_text()


def _slurm_story(job: str, log: Path) -> str:
    """What a timed-out wait on a job prints: SLURM's view of it, its log and the daemons' last lines."""
    def run(*argv):
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    daemons = Path(os.environ.get("SLURM_CONF", "/nonexistent")).parent / "log"
    tails = [f"--- {p}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
             for p in sorted(daemons.glob("slurm*.log"))]
    return "\n".join([f"--- scontrol show job {job}:", run("scontrol", "show", "job", job),
                      f"--- {log}:", log.read_text(errors="replace")[-3000:] if log.is_file() else "(none)", *tails])


def _wait(condition, timeout: float = 240.0, every: float = 0.2, explain=None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {condition}" + (f"\n{explain()}" if explain else ""))


# ----------------------------------------------------------------------------- without a cluster
def test_batch_script_runs_the_recorded_argv_and_resumes_when_requeued(tmp_path):
    """The generated script is plain bash: run it as SLURM would (array task 1, then as a restart)."""
    from harness.launchers.base import Step
    from harness.launchers.slurm import SlurmConfig, batch_script

    argv = [shutil.which("echo"), "train", "it's b"]
    steps = [Step("train/a", "train", [shutil.which("echo"), "train", "a"], [], tmp_path / "a"),
             Step("train/b", "train", argv, [], tmp_path / "b")]
    config = SlurmConfig(partition="gpu", account="lab", time="01:00:00", gpus_per_task=1, sbatch_args=["--qos=hi"])
    script = tmp_path / "train.sbatch"
    script.write_text(batch_script(steps, config, tmp_path / "log-%A_%a.out", tmp_path))
    text = script.read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --requeue", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --time=01:00:00", "#SBATCH --gpus-per-task=1", "#SBATCH --qos=hi"):
        assert line in text.splitlines(), line

    def run(restarts: int) -> str:
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": str(restarts)}
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout

    assert run(0).splitlines()[-1] == "train it's b"
    assert run(1).splitlines()[-1] == "train it's b --resume"


def test_two_gpus_per_task_puts_the_training_under_accelerate_launch():
    from harness.launchers.base import Step
    from harness.launchers.slurm import SlurmConfig, job_argv

    train = Step("train/a", "train", ["py", "-m", "harness", "train", "unet-mp-tr-bce"], [], Path("x"))
    assert job_argv(train, SlurmConfig(gpus_per_task=1)) == train.argv
    wrapped = job_argv(train, SlurmConfig(gpus_per_task=2))
    assert wrapped[:3] == ["py", "-m", "accelerate.commands.launch"] and wrapped[-4:] == ["-m", "harness", "train",
                                                                                          "unet-mp-tr-bce"]
    assert wrapped[wrapped.index("--num_processes") + 1] == "2"


def test_launcher_settings_from_file_and_flags_with_clear_errors(tmp_path):
    from harness.launchers import launcher_config

    path = tmp_path / "slurm.json"
    path.write_text(json.dumps({"partition": "a", "time": "02:00:00", "sbatch_args": ["--qos=x"]}))
    config = launcher_config("slurm", path, partition="b", sbatch_args=["--mem=4G"])
    assert (config.partition, config.time, config.sbatch_args) == ("b", "02:00:00", ["--qos=x", "--mem=4G"])
    path.write_text(json.dumps({"partitions": "a"}))
    with pytest.raises(UserError, match=r"slurm.json: unexpected \['partitions'\]"):
        launcher_config("slurm", path)
    path.write_text(json.dumps({"cpus_per_task": 0}))
    with pytest.raises(UserError, match="cpus_per_task must be a positive integer"):
        launcher_config("slurm", path)
    with pytest.raises(UserError, match="--partition only apply to --launcher slurm"):
        launcher_config("local", None, partition="a")


def test_a_failure_stops_exactly_what_reads_it():
    from harness.launchers.base import Step, dependants

    x = Path("x")
    steps = [Step("train/u", "train", [], [], x), Step("train/c", "train", [], [], x),
             Step("judge/mnist", "judges", [], ["train/c"], x), Step("export/u", "export", [], ["train/u"], x),
             Step("export/c", "export", [], ["train/c"], x), Step("bench", "bench", [], ["judge/mnist", "export/u",
                                                                                          "export/c"], x),
             Step("report", "report", [], ["train/u", "train/c", "judge/mnist", "export/u", "export/c", "bench"], x)]
    assert [s.key for s in dependants(steps, {"train/u"})] == ["export/u", "bench", "report"]
    assert [s.key for s in dependants(steps, {"judge/mnist"})] == ["bench", "report"]
    assert dependants(steps, {"report"}) == []


def test_a_rerun_watches_live_jobs_again_and_resubmits_what_reads_a_failed_one(tmp_path, monkeypatch):
    """SLURM's answers faked (squeue, sbatch, scancel), the launcher's bookkeeping real: a training still
    running from the previous invocation is watched, not submitted twice, though it is now planned with
    --resume; an export waiting on a training that failed is cancelled and submitted again after the
    new training job."""
    import harness.launchers.slurm as slurm
    from harness.launchers.base import Step

    out = tmp_path / "out"
    outputs = {k: tmp_path / k.replace("/", "-") for k in ("train/a", "train/b", "export/a", "export/b")}
    steps = [Step("train/a", "train", ["py", "train", "a", "--resume"], [], outputs["train/a"]),
             Step("train/b", "train", ["py", "train", "b"], [], outputs["train/b"]),
             Step("export/a", "export", ["py", "export", "a"], ["train/a"], outputs["export/a"]),
             Step("export/b", "export", ["py", "export", "b"], ["train/b"], outputs["export/b"])]
    previous = {"train/a": {"job_id": "5_0", "argv": ["py", "train", "a"], "state": "running"},
                "train/b": {"job_id": "5_1", "argv": ["py", "train", "b"], "state": "failed"},
                "export/a": {"job_id": "6", "argv": ["py", "export", "a"], "state": "pending"},
                "export/b": {"job_id": "7", "argv": ["py", "export", "b"], "state": "pending"}}
    squeue = {"5_0": "RUNNING", "5_1": "FAILED", "6": "PENDING", "7": "PENDING"}
    calls = []
    next_id = iter(["8", "9"])

    class Done:
        stdout, returncode = "", 0

    def fake_slurm(*args, check=True):
        calls.append(args)
        done = Done()
        if args[0] == "sbatch":
            done.stdout = next(next_id) + "\n"
        return done

    polls = []

    def fake_states(ids):
        polls.append(ids)
        if len(polls) == 1:  # what the previous invocation left
            return {i: (squeue[i], "node1") for i in ids}
        for path in outputs.values():  # from the second poll on, everything finished
            path.touch()
        return {i: ("COMPLETED", "node1") for i in ids}

    monkeypatch.setattr(slurm, "_slurm", fake_slurm)
    monkeypatch.setattr(slurm, "job_states", fake_states)
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: "/usr/bin/" + tool)
    states = {s.key: {"stage": s.stage, "argv": s.argv, "after": s.after, "state": "planned"} for s in steps}
    launcher = slurm.SlurmLauncher(slurm.SlurmConfig(poll_seconds=0.01), out, states, lambda: None, previous)
    launcher.launch(steps)

    submitted = [c for c in calls if c[0] == "sbatch"]
    assert len(submitted) == 2  # the array of the one training to redo, then the export reading it
    assert "--dependency=afterok:8_0" in submitted[1]
    assert ("scancel", "7") in calls and ("scancel", "6") not in calls
    assert {k: s["job_id"] for k, s in states.items()} == {"train/a": "5_0", "train/b": "8_0", "export/a": "6",
                                                          "export/b": "9"}
    assert states["train/a"]["argv"] == ["py", "train", "a"]  # what the watched job runs
    assert all(s["state"] == "completed" for s in states.values())
    array_script = Path(states["train/b"]["script"]).read_text()
    assert "#SBATCH --array=0-0" in array_script and "train b" in array_script and "train a" not in array_script
