"""The typed jobs shared by the command line and the worker (WeakSegLib/app/job_types.py): every kind survives
its job file, a job file takes the typed defaults, and each command builds the job the worker would read."""

import dataclasses
import json

import pytest

from WeakSegLib import config as cfg
from WeakSegLib.app import job_types as jobs
from WeakSegLib.app.cli import build_parser, main
from WeakSegLib.errors import InputError

EXAMPLES = [
    jobs.TrainJob("m", [cfg.TrainCase("a.nii", boxes="a.json"), cfg.TrainCase("b.nii", mask="b-mask.nii")],
             cfg.TrainConfig(recipe="deepcut", epochs=3, betas=(0.5, 0.9), recipe_settings={"crf": {"iterations": 2}}),
             resume=False, gpus=2, backend="gloo"),
    jobs.TightenTrainJob("t", [cfg.TightenerCase("a.nii", "a-mask.nii")], cfg.TightenerConfig(patch=8, labels=[1, 3])),
    jobs.TightenJob("t", "a.nii", "a3d.json", "a2d.json", cfg.TightenSettings(stride=2, smooth=False), device="cpu",
               report_out="r.json"),
    jobs.PredictJob("m", "a.nii", "p.nii.gz", prob_out="prob.nii.gz", device="cpu", postprocess=False),
    jobs.PredictCasesJob("m", [jobs.PredictCase("a", "a.nii", "a-mask.nii"), jobs.PredictCase("b", "b.nii")], "out",
                    suffix=".seg.nrrd"),
    jobs.RankJob("m", "dataset.json", split="test", device="cuda"),
]


def test_every_kind_has_an_example_here():
    assert {type(job).kind for job in EXAMPLES} == set(jobs.JOBS)


@pytest.mark.parametrize("job", EXAMPLES, ids=lambda job: job.kind)
def test_a_job_survives_its_job_file(job):
    assert jobs.parse_job(json.loads(json.dumps(job.to_dict()))) == job


def test_a_job_file_with_the_required_fields_only_takes_the_typed_defaults():
    job = jobs.parse_job({"kind": "predict", "model": "m", "image": "a.nii", "out": "p.nii.gz"})
    assert job == jobs.PredictJob("m", "a.nii", "p.nii.gz")
    assert (job.device, job.postprocess) == (cfg.DEFAULT_DEVICE, True)
    train = jobs.parse_job({"kind": "train", "out": "m", "cases": [{"image": "a.nii", "boxes": "a.json"}]})
    assert train.config == cfg.TrainConfig() and (train.resume, train.gpus) == (True, 1)


@pytest.mark.parametrize("job, error, message", [
    ({"kind": "rank", "model": "m"}, jobs.JobFileError, "a rank job needs 'dataset'"),
    ({"kind": "predict", "model": "m", "image": "a", "out": "p", "postprocess": "no"}, jobs.JobFileError,
     "'postprocess' is 'no', not bool"),
    ({"kind": "train", "out": "m", "cases": [{"image": "a"}], "gpus": True}, jobs.JobFileError,
     "'gpus' is True, not int"),
    ({"kind": "tighten", "model": "t", "image": "a", "boxes": "b", "out": "o", "settings": {"stride": "2"}},
     InputError, "job settings: stride is '2', not a whole number"),
    ({"kind": "predict-cases", "model": "m", "cases": [{"image": "a"}], "out_dir": "o"}, InputError,
     "job case has no name"),
])
def test_a_job_files_shape_is_a_job_file_error_and_its_settings_bad_input(job, error, message):
    with pytest.raises(error) as err:
        jobs.parse_job(job)
    assert message in str(err.value) and (error is jobs.JobFileError) == isinstance(err.value, jobs.JobFileError)


def test_the_commands_options_come_from_the_options_classes():
    """Every field of cfg.PredictOptions is an option of predict (cfg.DeviceOption's of rank and tighten), with its
    default: a new prediction option is a field there, and the command line has it."""
    commands = build_parser()._subparsers._group_actions[0].choices
    for command, cls in (("predict", cfg.PredictOptions), ("rank", cfg.DeviceOption), ("tighten", cfg.DeviceOption)):
        options = {a.dest: a for a in commands[command]._actions}
        for f in dataclasses.fields(cls):
            assert options[f.name].default == f.default, (command, f.name)


@pytest.fixture
def ran(monkeypatch):
    """The job each command runs, caught before any work: ``ran[kind]``."""
    caught = {}
    results = {"predict": {"prediction": "p", "probability": None}, "predict-cases": {"failed": {}},
               "rank": {"ranking": "r.csv", "ranked": [], "failed": {}, "volumes_mm3": {}},
               "tighten": {"warnings": [], "boxes": []}, "tighten-train": {"patches": 1, "metrics": {}},
               "train": {"model": "m", "metrics": {}}}
    for kind, cls in jobs.JOBS.items():
        def run(self, on_event, should_stop=None, kind=kind):
            caught[kind] = self
            return results[kind]
        monkeypatch.setattr(cls, "run", run)
    return caught


@pytest.mark.parametrize("argv, expected", [
    (["predict", "--model", "m", "--image", "a.nii", "--out", "p.nii.gz", "--device", "cpu", "--no-postprocess"],
     jobs.PredictJob("m", "a.nii", "p.nii.gz", device="cpu", postprocess=False)),
    (["predict", "--model", "m", "--images", "x/a.nii.gz", "y/b.nrrd", "--out-dir", "o"],
     jobs.PredictCasesJob("m", [jobs.PredictCase("a", "x/a.nii.gz"), jobs.PredictCase("b", "y/b.nrrd")], "o")),
    (["rank", "--model", "m", "--dataset", "d.json", "--split", "test", "--device", "cpu"],
     jobs.RankJob("m", "d.json", split="test", device="cpu")),
    (["tighten", "--model", "t", "--image", "a.nii", "--boxes", "b.json", "--out", "o.json", "--stride", "2",
      "--no-smooth", "--report", "r.json"],
     jobs.TightenJob("t", "a.nii", "b.json", "o.json", cfg.TightenSettings(stride=2, smooth=False),
                     report_out="r.json")),
    (["tighten-train", "--image", "a.nii", "--mask", "m.nii", "--out", "t", "--axis", "1", "--patch-size", "8",
      "--no-resume"],
     jobs.TightenTrainJob("t", [cfg.TightenerCase("a.nii", "m.nii")], cfg.TightenerConfig(patch=8, axis=1),
                          resume=False)),
    (["train", "--image", "a.nii", "--boxes", "a.json", "--out", "m", "--recipe", "boxsup", "--boxsup-k", "3",
      "--epochs", "2"],
     jobs.TrainJob("m", [cfg.TrainCase("a.nii", boxes="a.json")],
              cfg.TrainConfig(recipe="boxsup", epochs=2, recipe_settings={"boxsup_k": 3}))),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_each_command_runs_the_job_the_worker_reads_from_the_same_settings(argv, expected, ran, capsys):
    assert main(argv) == 0, capsys.readouterr().err
    job = ran[expected.kind]
    assert job == expected
    assert jobs.parse_job(json.loads(json.dumps(job.to_dict()))) == job
