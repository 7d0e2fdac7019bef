"""Pipeline pattern (notebook 01): same predictions in every strategy, errors surface, clean shutdown."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from labkit import data
from labkit.errors import WorkerFailed
from labkit.exercises import ExerciseFailed, ex01
from labkit.models import vision
from labkit.patterns import pipeline
from labkit.runtime import hardware

N_SCENES = 24


@pytest.fixture(scope="module")
def scenes() -> data.Scenes:
    return data.make_scenes(N_SCENES, seed=7)


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    with hardware.threads_limited(1):
        yield


@pytest.fixture(scope="module")
def reference(scenes: data.Scenes) -> pipeline.PipelineRun:
    return pipeline.run_sequential(pipeline.scene_stages(), pipeline.to_batches(scenes.images, 1))


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(pipeline.THREAD_PREFIX)]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_detector_quality_above_floor(reference: pipeline.PipelineRun, scenes: data.Scenes) -> None:
    quality = vision.evaluate(reference.flat(), scenes)
    assert quality.recall >= 0.9 and quality.precision >= 0.9, quality
    assert quality.crop_accuracy >= 0.85, quality
    assert quality.scene_accuracy >= 0.6, quality


def test_detector_quality_on_more_scenes() -> None:
    more = data.make_scenes(150, seed=21)
    run = pipeline.run_sequential(pipeline.scene_stages(), pipeline.to_batches(more.images, 16))
    quality = vision.evaluate(run.flat(), more)
    assert quality.recall >= 0.95 and quality.precision >= 0.95, quality
    assert quality.crop_accuracy >= 0.9, quality


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("replicas", "batch_size", "queue_depth"),
    [({}, 1, 4), ({"detect": 2}, 1, 4), ({"detect": 2, "classify": 2}, 1, 1), ({}, 4, 2)],
)
def test_threads_same_predictions_in_order(reference: pipeline.PipelineRun, scenes: data.Scenes, replicas: dict, batch_size: int, queue_depth: int) -> None:
    stages = pipeline.with_replicas(pipeline.scene_stages(), **replicas)
    run = pipeline.run_threads(stages, pipeline.to_batches(scenes.images, batch_size), queue_depth=queue_depth)
    assert _same(run.flat(), reference.flat())
    assert len(run.latencies_s) == len(run.outputs) and run.throughput_per_s > 0
    assert {s.stage for s in run.timeline} == {"denoise", "detect", "classify"}
    assert not _pipeline_threads()


@pytest.mark.timeout(300)
def test_processes_same_predictions_and_no_children_left(reference: pipeline.PipelineRun, scenes: data.Scenes) -> None:
    stages = pipeline.with_replicas(pipeline.scene_stages(), detect=2)
    run = pipeline.run_processes(stages, pipeline.to_batches(scenes.images, 1), queue_depth=2)
    assert _same(run.flat(), reference.flat())
    assert run.startup_s > 0 and set(run.timeline.workers()) == {"denoise-0", "detect-0", "detect-1", "classify-0"}
    assert all(len(v) for v in run.hops_s.values())
    assert not multiprocessing.active_children()
    assert not _pipeline_threads()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("broken", ["denoise", "detect", "classify"])
def test_thread_stage_error_names_stage(scenes: data.Scenes, broken: str) -> None:
    stages = [pipeline.failing(s, after=3) if s.name == broken else s for s in pipeline.scene_stages(detect=2)]
    with pytest.raises(WorkerFailed, match=f"stage '{broken}'") as info:
        pipeline.run_threads(stages, pipeline.to_batches(scenes.images, 1), queue_depth=1)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert not _pipeline_threads()


@pytest.mark.timeout(300)
def test_process_stage_error_names_stage(scenes: data.Scenes) -> None:
    stages = [pipeline.Stage("denoise", pipeline.build_denoise), pipeline.failing(pipeline.Stage("detect", pipeline.build_detect), after=2)]
    with pytest.raises(WorkerFailed, match="stage 'detect'.*injected failure"):
        pipeline.run_processes(stages, pipeline.to_batches(scenes.images, 1), queue_depth=1)
    assert not multiprocessing.active_children()
    assert not _pipeline_threads()


@pytest.mark.parametrize("runner", [pipeline.run_sequential, pipeline.run_threads])
@pytest.mark.parametrize("warmup", [True, False])
def test_warmup_item_is_untimed_and_dropped(runner, warmup: bool) -> None:
    seen: list[int] = []

    def build():
        def double(x: int) -> int:
            seen.append(x)
            return 2 * x

        return double

    run = runner([pipeline.Stage("double", build)], [5, 6, 7], warmup=warmup)
    assert run.outputs == [10, 12, 14]
    assert seen == ([5, 5, 6, 7] if warmup else [5, 6, 7])  # the warm-up is the first item, once
    assert sorted(s.item for s in run.timeline.spans) == [0, 1, 2]  # only real items are timed
    assert len(run.latencies_s) == 3


def test_bound_and_replicas() -> None:
    times = {"a": 0.001, "b": 0.004, "c": 0.002}
    assert pipeline.pipeline_bound(times) == pytest.approx(250.0)
    assert pipeline.pipeline_bound(times, {"b": 2}) == pytest.approx(500.0)
    with pytest.raises(Exception, match="no stage named"):
        pipeline.with_replicas(pipeline.scene_stages(), nope=2)
    with pytest.raises(Exception, match="at least 1 replica"):
        pipeline.Stage("x", pipeline.build_denoise, 0)


def test_measure_stages_reports_every_stage(scenes: data.Scenes) -> None:
    times = pipeline.measure_stages(pipeline.scene_stages(), pipeline.to_batches(scenes.images[:4], 1), repeats=1)
    assert list(times) == ["denoise", "detect", "classify"] and all(t > 0 for t in times.values())


def test_to_batches_shapes() -> None:
    batches = pipeline.to_batches(np.zeros((10, 32, 32), np.float32), 4)
    assert [tuple(b.shape) for b in batches] == [(4, 1, 32, 32), (4, 1, 32, 32), (2, 1, 32, 32)]


def test_evaluate_perfect_and_empty(scenes: data.Scenes) -> None:
    perfect = vision.evaluate(list(zip(scenes.boxes, scenes.labels)), scenes)
    assert (perfect.precision, perfect.recall, perfect.crop_accuracy, perfect.scene_accuracy) == (1.0, 1.0, 1.0, 1.0)
    empty = vision.evaluate([(np.zeros((0, 4), np.int64), np.zeros(0, np.int64))] * len(scenes), scenes)
    assert empty.recall == 0.0 and empty.scene_accuracy == 0.0
    shifted = [(b + 3, lab) for b, lab in zip(scenes.boxes, scenes.labels)]  # IoU 25/103 < 0.5
    assert vision.evaluate(shifted, scenes).recall == 0.0


def test_box_iou() -> None:
    a = np.array([[0, 0, 8, 8]])
    assert vision.box_iou(a, a)[0, 0] == 1.0
    assert vision.box_iou(a, np.array([[4, 0, 12, 8]]))[0, 0] == pytest.approx(1 / 3)


def test_exercise_checks(reference: pipeline.PipelineRun) -> None:
    times = {"denoise": 0.001, "detect": 0.004, "classify": 0.002}
    assert ex01.check_bound(None, times) is False
    assert ex01.check_bound(250.0, times) is True
    with pytest.raises(ExerciseFailed, match="time per item"):
        ex01.check_bound(0.004, times)
    with pytest.raises(ExerciseFailed, match="sequential"):
        ex01.check_bound(1 / 0.007, times)
    assert ex01.check_bottleneck_replica(None, times, reference, None) is False
    with pytest.raises(ExerciseFailed, match="not the bottleneck"):
        ex01.check_bottleneck_replica("denoise", times, reference, reference)
    with pytest.raises(ExerciseFailed, match="2 replicas"):
        ex01.check_bottleneck_replica("detect", times, reference, reference)


def test_against_bound_judges_each_run_by_the_stage_timings_around_it(scenes: data.Scenes, reference: pipeline.PipelineRun) -> None:
    items = pipeline.to_batches(scenes.images, 8)
    checked = pipeline.against_bound(pipeline.scene_stages(), items, repeats=2)
    assert len(checked.runs) == len(checked.bounds_per_s) == len(checked.ratios) == 2
    assert checked.scenes_per_item == 8 and checked.slowest in checked.stage_s
    assert checked.ratio == max(checked.ratios)  # of two runs, the better of the middle two
    assert checked.ratio == pytest.approx(checked.throughput_per_s / checked.bound_per_s)  # one run's figures
    assert checked.stage_s == checked.stage_runs[checked.index] and len(checked.stage_runs) == 2
    assert checked.runs[0].n_scenes == N_SCENES and set(checked.inside_s()) == set(checked.stage_s)
    assert f"= {checked.ratio:.2f}× of the bound" in checked.shortfall()  # in-call share / inflation = the ratio
    assert _same(checked.run.flat(), reference.flat())  # same predictions, in order
    assert all(b > 0 for b in checked.bounds_per_s) and not _pipeline_threads()
