"""Export a study's best model: weights, config, tokenizer and a model card in one folder.

``hpo export study.yaml --to DIR`` takes the best completed trial (or ``--trial N``),
copies the model files of its last checkpoint (``hpo:checkpoint``: a Hugging Face
``checkpoint-<step>`` folder holding ``config.json`` and the weights; optimizer and
trainer state stay behind), adds the tokenizer of the base model the trainer started
from (the trainer saves none: it never changes it), and writes ``README.md`` (a model
card: study, trial, params, validation and test metrics, data, package versions) and
``hpo_export.json`` (the same facts for machines, and the mark of an export: ``--force``
replaces a folder holding it and no other; never one that holds the working folder, the
study file, its storage file or its output_dir). The folder loads with
``AutoModelForSequenceClassification.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)``; the tokenizer's ``model_max_length`` is the
study's ``max_seq_length``, so ``tokenizer(text, truncation=True)`` tokenizes as
training did. An adapter trial's export is its adapter in peft's format (loaded with
``PeftModel.from_pretrained(base, DIR)``; the card says ``library_name: peft``), or with
``merge`` the adapter merged into its base: a folder as above.

It lives in hpo (not in the trainer) because it is a command over a stored study; the
trainer-specific steps go through the trainer contract (``hpo/contract.py``): the
trainer's ``resolve_model`` names the base model (so packaged names such as
``minilm-l6`` and study-relative paths resolve exactly as they did in training), its
``save_model`` writes the loadable folder, and its ``hub_ids`` names packaged models on
the card. hpo never imports a trainer module by name. Checkpoint paths are relative to
the folder the study ran in (``output_dir``), so export from there. A checkpoint in object
storage (``output_dir: s3://...``, :mod:`hpo.object_store`) is downloaded into a temporary
folder first; one without its ``.complete`` marker (an upload that was cut) is refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from hpo import DISTRIBUTION, object_store
from hpo import storage as st
from hpo.config import StudyConfig
from hpo.contract import resolve_trainer
from hpo.errors import ConfigError, HpoError, StudyStateError
from hpo.space import trial_args
from hpo.view import StudyView, TrialAttrs, open_view

logger = logging.getLogger(__name__)

_PACKAGES = (DISTRIBUTION, "optuna", "transformers", "torch", "datasets", "tokenizers")
# Every export writes it: how --force tells a previous export (which it may replace) from
# any other folder (which it never deletes).
FACTS_FILE = "hpo_export.json"


def export_best(
    config: StudyConfig,
    to: str | Path | None,
    *,
    trial_number: int | None = None,
    force: bool = False,
    merge: bool = False,
    push_to_hub: str | None = None,
) -> dict[str, Any]:
    """Write the best (or the given) trial's model to ``to``; return the card's facts.

    An adapter trial's export is its adapter (peft's format), or with ``merge`` the
    adapter merged into the base model; a full fine-tune's is the same either way.
    ``push_to_hub``: also upload the folder to this Hub model repository (created if
    needed), in one commit, before the folder is moved into place; with ``to`` None the
    folder is only pushed.

    Raises:
        ConfigError: ``to`` is a non-empty folder and ``force`` is off.
        StudyStateError: no such study, no completed trial, or its checkpoint is gone.
        HpoError: the push failed (offline, no token, refused); nothing was written.
    """
    if to is None:  # pushed only: made in a temporary folder, gone afterwards
        with tempfile.TemporaryDirectory() as folder:
            pushed = Path(folder) / "export"
            return export_best(
                config, pushed, trial_number=trial_number, merge=merge, push_to_hub=push_to_hub
            )
    target = export_target(config, to, force=force)
    view = _load(config)
    trial = _pick_trial(view, trial_number)
    checkpoint = _checkpoint(trial, view)
    trained_with = trained_args(view)
    facts = model_facts(config, trial, view.attrs(trial), checkpoint, trained_with)
    facts["merged"] = merge and facts["adapter"].get("type", "none") != "none"
    if push_to_hub:
        _create_hub_repo(push_to_hub)  # offline, no token, a bad id: said before any write
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own beside the target: a rename into place is atomic on one file system.
    # A plain mkdir, not mkdtemp (0700): the export's mode follows the umask, as any folder.
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()
    try:
        save_model = _trainer_hook(config, "save_model")
        # The trial's own arguments: those the study ran with, what it searched (a
        # max_seq_length...), and the base model it trained.
        args = {**trial_args(trained_with, trial.params), "model": base_model_name(config, trial)}
        # Only a merge passes the keyword: hooks written before it keep working.
        extra = {"merge": True} if facts["merged"] else {}
        if extra and "merge" not in inspect.signature(save_model).parameters:
            raise StudyStateError(
                f"trainer {config.trainer.ref} cannot merge adapters (its save_model hook "
                "takes no merge keyword); export without --merge"
            )
        with _local_copy(checkpoint, trial.number) as local:
            try:
                save_model(local, staging, args, config.study_dir, **extra)
            except ValueError as e:  # the trainer's word on a checkpoint it cannot export
                raise StudyStateError(f"trial {trial.number}: {e}") from None
        (staging / FACTS_FILE).write_text(json.dumps(facts, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(facts), encoding="utf-8")
        if push_to_hub:
            _upload_to_hub(staging, push_to_hub, facts)
        _replace(target, staging)  # readers never see a half-written export
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return facts


def _create_hub_repo(repo_id: str) -> None:
    from huggingface_hub import HfApi

    try:
        HfApi().create_repo(repo_id, exist_ok=True)
    except (OSError, ValueError) as e:  # the hub client's errors: connection, HTTP, bad id
        raise _hub_error(repo_id, e) from e


def _upload_to_hub(folder: Path, repo_id: str, facts: dict[str, Any]) -> None:
    """The export folder as one commit (huggingface_hub's upload_folder): never half there."""
    from huggingface_hub import HfApi

    message = f"hpo export: trial {facts['trial']} of study {facts['study']}"
    try:
        HfApi().upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
    except (OSError, ValueError) as e:
        raise _hub_error(repo_id, e) from e


def _hub_error(repo_id: str, error: Exception) -> HpoError:
    said = str(error).strip().splitlines()
    return HpoError(
        f"cannot push to the Hub repository {repo_id}: "
        f"{said[0] if said else type(error).__name__}; nothing was exported"
    )


def export_target(config: StudyConfig, to: str | Path, *, force: bool = False) -> Path:
    """The absolute folder to export to, checked before anything is read or written.

    Raises:
        ConfigError: ``to`` holds the working folder, the study file, its storage file or
            its output_dir (never replaced, even with ``force``); is a file or a link; is
            a folder this process cannot list; or
            is a non-empty folder that is not a previous export (never replaced), or is
            one and ``force`` is off.
    """
    shown = Path(to)
    target = Path(os.path.abspath(to))  # "." and ".." have no name to stage beside
    for what, path in _study_paths(config):
        if path.resolve().is_relative_to(target.resolve()):
            raise ConfigError(
                f"{shown} holds {what} ({path}); choose a new folder for the export",
                field="--to",
            )
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        kind = "a symbolic link" if target.is_symlink() else "a file"
        raise ConfigError(f"{shown} is {kind}; choose a new folder", field="--to")
    try:
        held = sorted(p.name for p in target.iterdir()) if target.exists() else []
    except PermissionError as e:  # another user's folder: the export could not write it
        raise ConfigError(
            f"{shown} cannot be read ({e.strerror}); choose a folder you can read and write",
            field="--to",
        ) from e
    if not held:
        return target
    previous = _previous_export(target)
    if previous is None:
        listing = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise ConfigError(
            f"{shown} is not an hpo export (it holds {listing}); choose an empty or new folder",
            field="--to",
        )
    if not force:
        raise ConfigError(
            f"{shown} is not empty ({previous}); choose a new folder or pass --force to "
            "replace it",
            field="--to",
        )
    return target


def _study_paths(config: StudyConfig) -> list[tuple[str, Path]]:
    """What an export must never replace: where the study runs and what it keeps."""
    paths = [("the working folder", Path.cwd()), ("output_dir", Path(config.output_dir))]
    if config.source is not None:
        paths.append(("the study file", Path(config.source)))
    url = st.expand_url(config.storage)
    storage_file = st.sqlite_path(url)
    if url.startswith("journal:///"):
        storage_file = st.journal_path(url)
    if storage_file is not None:
        paths.append(("the storage file", storage_file))
    return paths


def _previous_export(folder: Path) -> str | None:
    """``the export of trial N of study S`` when ``folder`` holds one, else None."""
    try:
        facts = json.loads((folder / FACTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or not {"study", "trial"} <= facts.keys():
        return None
    return f"the export of trial {facts['trial']} of study {facts['study']!r}"


def _replace(target: Path, staging: Path) -> None:
    """Move ``staging`` to ``target``; a previous export there goes once the new one is in."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _load(config: StudyConfig) -> StudyView:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return open_view(config)


def trained_args(view: StudyView) -> dict[str, Any]:
    """The trainer args the study last ran with (its stored ``hpo:config``), not the study
    file's now: a file edited, or a ``--set`` left out, after the run must not change what
    the export says or how its tokenizer truncates. ``${VAR}`` templates stay as stored; a
    study that stores no config (not run by hpo) falls back on the file's."""
    config = view.config
    current = config.stored_form()["trainer"]["args"]
    stored = (view.stored_config or {}).get("trainer", {}).get("args")
    if stored is None:
        return current
    if stored != current:
        changed = sorted(k for k in {*stored, *current} if stored.get(k) != current.get(k))
        logger.warning(
            "trainer.args differ from those study %r ran with (%s); exporting with the study's",
            config.name,
            ", ".join(changed),
        )
    return stored


def _pick_trial(view: StudyView, number: int | None) -> Any:
    config = view.config
    completed = view.completed()
    if number is None:
        if not completed:
            raise StudyStateError(f"study {config.name!r} has no completed trial to export")
        if config.multi_objective:
            front = ", ".join(str(t.number) for t in view.pareto_front()) or "none"
            raise StudyStateError(
                f"study {config.name!r} has several objectives, so no single best trial; "
                f"choose one on the Pareto front with --trial N (front: {front}; see hpo best)"
            )
        best = view.best()
        if best is None:
            raise StudyStateError(
                f"study {config.name!r} has no completed trial that meets its constraints; "
                "choose one with --trial N (hpo status lists them)"
            )
        return best
    match = [t for t in completed if t.number == number]
    if not match:
        raise StudyStateError(
            f"study {config.name!r} has no completed trial {number}; "
            f"completed: {', '.join(str(t.number) for t in completed) or 'none'}"
        )
    return match[0]


def _checkpoint(trial: Any, view: StudyView) -> Path | str:
    """The trial's checkpoint folder, or its URL in object storage (read by
    :func:`_local_copy`)."""
    recorded = view.attrs(trial).checkpoint
    if not recorded:
        raise StudyStateError(
            f"trial {trial.number} of {view.config.name!r} saved no checkpoint; set "
            "trainer.args.save_checkpoints: true (the default) and run again"
        )
    if object_store.is_remote(recorded):
        if not object_store.is_inside(recorded, object_store.study_url(view.config)):
            raise StudyStateError(
                f"trial {trial.number}: checkpoint {recorded} is not in this study's "
                f"output_dir ({object_store.study_url(view.config)}); hpo reads only its own"
            )
        return recorded
    path = Path(recorded)
    if not (path / "config.json").is_file():
        raise StudyStateError(
            f"trial {trial.number}: checkpoint {path} is missing here; run export from the "
            "folder the study ran in (output_dir is relative to it), or the checkpoint "
            "was deleted (keep_checkpoints keeps only the best trials')"
        )
    return path


@contextlib.contextmanager
def _local_copy(checkpoint: Path | str, number: int) -> Iterator[Path]:
    """``checkpoint`` as a local folder: a checkpoint in object storage is downloaded
    into a temporary folder for as long as the export needs it."""
    if isinstance(checkpoint, Path):
        yield checkpoint
        return
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as folder:
        local = Path(folder) / "checkpoint"
        local.mkdir()
        if not object_store.download_complete(checkpoint, local):
            raise StudyStateError(
                f"trial {number}: checkpoint {checkpoint} is incomplete (its upload was cut) "
                "or was deleted (keep_checkpoints keeps only the best trials')"
            )
        yield local


def _trainer_hook(config: StudyConfig, name: Literal["resolve_model", "save_model"]) -> Any:
    """The trainer's export hook ``name`` (a :class:`~hpo.contract.Trainer` field), found
    through trainer.ref.

    Raises:
        StudyStateError: the trainer does not offer it, so its models cannot be exported.
    """
    hook = getattr(resolve_trainer(config.trainer.ref, config.study_dir), name)
    if hook is None:
        raise StudyStateError(
            f"trainer {config.trainer.ref} cannot export its model: it defines no "
            f"{name} hook (see the trainer contract in hpo/contract.py)"
        )
    return hook


def base_model_name(config: StudyConfig, trial: Any) -> str:
    """The base model this trial trained: its own ``model`` param, else trainer.args.model."""
    from hpo.pareto import trial_model

    return str(trial_model(trial, config) or "minilm-l6")


def base_model_path(config: StudyConfig, trial: Any) -> str:
    """The folder (or hub id) of the model the trial fine-tuned, resolved as it was."""
    resolve_model = _trainer_hook(config, "resolve_model")
    return str(resolve_model(base_model_name(config, trial), config.study_dir))


def model_facts(
    config: StudyConfig,
    trial: Any,
    attrs: TrialAttrs,
    checkpoint: Path | str,
    args: dict[str, Any],
) -> dict[str, Any]:
    """Everything the model card says, as JSON data; ``attrs``: what hpo stored on the
    trial; ``args``: the trainer args the study ran with, as stored (``${VAR}`` templates,
    not the secrets they expanded to)."""
    metrics = attrs.metrics
    return {
        "study": config.name,
        "storage": st.redact_url(config.storage),
        "study_file": str(config.source) if config.source else None,
        "trial": trial.number,
        "objective": {
            "metric": config.objectives[0].metric,
            "direction": config.objectives[0].direction,
            "value": trial.values[0],
        },
        "objectives": [
            {**o.model_dump(), "value": v}
            for o, v in zip(config.objectives, trial.values, strict=True)
        ],
        "params": dict(trial.params),
        "validation_metrics": {k: v for k, v in metrics.items() if k.startswith("eval_")},
        "test_metrics": {k: v for k, v in metrics.items() if k.startswith("test_")},
        "trainer": {"ref": config.trainer.ref, "args": args},
        # The trainer's task: the card's pipeline tag and loading snippet.
        "task": resolve_trainer(config.trainer.ref, config.study_dir).task,
        "base_model": {
            **attrs.model,
            "name": base_model_name(config, trial),
            "path": base_model_path(config, trial),
        },
        # What trained: {"type": "none"} or the adapter's settings (hpo:adapter).
        "adapter": attrs.adapter or {"type": "none"},
        "data": _data_facts(config, args),
        "checkpoint": str(checkpoint),
        "seed": config.seed,
        "packages": {name: _version(name) for name in _PACKAGES},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _data_facts(config: StudyConfig, args: dict[str, Any]) -> dict[str, Any]:
    dataset = dict(args.get("dataset") or {})
    path = dataset.get("path")
    if path and "${" in path:  # a template: the file as this command expands it
        path = (config.trainer.args.get("dataset") or {}).get("path")
    if path:
        file = Path(path) if Path(path).is_absolute() else config.study_dir / path
        if file.is_file():
            dataset["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
            dataset["rows"] = sum(1 for _ in file.open(encoding="utf-8", errors="replace")) - 1
    return dataset


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def model_card(facts: dict[str, Any]) -> str:
    """README.md for the exported folder: a Hugging Face model card.

    Built with huggingface_hub's ``ModelCardData``, so the front matter is what the Hub
    reads: ``base_model`` (the hub id or folder name the trial fine-tuned), ``license``
    from the base model's own card (the model's licence, not a package's that ships it),
    ``datasets``: the data it was fine-tuned on, the validation and test metrics as
    ``model-index`` evaluation results, and the study's provenance under ``hpo``, with the
    base model's own data sets under ``hpo.base_model`` (the Hub would otherwise credit
    this model with the base model's pre-training sets).
    """
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_card_facts(facts)
    data = ModelCardData(
        model_name=f"{facts['study']}-trial-{facts['trial']}",
        base_model=base["id"],
        license=base["license"],
        datasets=[_dataset_id(facts["data"])],
        library_name="peft" if _adapter_only(facts) else "transformers",
        pipeline_tag=_task(facts),
        tags=["hpo", "optuna", _task(facts), *_adapter_tags(facts)],
        eval_results=_eval_results(facts) or None,
        hpo={**_provenance(facts), "base_model": base},
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{_card_body(facts)}"))


def base_model_card_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The base model's hub id (or folder name), licence and data sets, as its card says."""
    base = facts["base_model"]
    card = _base_card(base["path"])
    return {
        "id": base_model_id(base["name"], base["path"], facts["trainer"]["ref"]),
        "license": base.get("license") or (card.license if card else None),
        "datasets": base.get("datasets") or (card.datasets if card else None),
    }


def _dataset_id(data: dict[str, Any]) -> str:
    """How a card names the fine-tuning data: its hub id, else its file's name."""
    return str(data.get("hub") or Path(str(data.get("path") or "data")).name)


def _adapter_only(facts: dict[str, Any]) -> bool:
    """Whether the export is an adapter (peft's format), not a whole model."""
    adapter = facts.get("adapter") or {"type": "none"}
    return adapter["type"] != "none" and not facts.get("merged")


def _adapter_tags(facts: dict[str, Any]) -> list[str]:
    """``lora`` for an adapter trial, and ``merged`` once merged into its base."""
    kind = (facts.get("adapter") or {"type": "none"})["type"]
    if kind == "none":
        return []
    return [kind, "merged"] if facts.get("merged") else [kind]


def base_model_id(name: str, path: str, trainer_ref: str) -> str:
    """How a card names a base model: its hub id, else the name of its local folder.

    A packaged model's hub id comes from the trainer's ``hub_ids`` (its alias -> hub id).
    """
    hub_ids = resolve_trainer(trainer_ref, Path.cwd()).hub_ids
    if name in hub_ids:
        return str(hub_ids[name])
    return Path(path).name if Path(path).is_dir() else path


def _base_card(path: str) -> Any:
    """The base model's own card data (license, datasets), when its folder has one."""
    from huggingface_hub import ModelCard

    readme = Path(path) / "README.md"
    if not readme.is_file():
        return None  # a hub id: export reads nothing from the network
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data
    except Exception:  # a README without valid front matter says nothing about licences
        return None


_NO_TEST_SCORE = (
    "Not scored: the test split is scored for trials that led the study when they finished "
    "(the best trial always did), and this one did not, or the data has no test split. "
    "`score_test: all` in the trainer args scores every trial."
)


def _eval_results(facts: dict[str, Any]) -> list[Any]:
    from huggingface_hub import EvalResult

    from hpo.status import shown_metrics

    data = facts["data"]
    dataset = _dataset_id(data)
    results = []
    for split, key, prefix in (
        ("validation", "validation_metrics", "eval_"),
        ("test", "test_metrics", "test_"),
    ):
        for name, value in shown_metrics(facts[key]).items():
            if name.removeprefix(prefix) == "loss":
                continue  # what training minimized, not a result to compare models by
            results.append(
                EvalResult(
                    task_type=_task(facts),
                    dataset_type=dataset if data.get("hub") else Path(dataset).stem,
                    dataset_name=dataset,
                    dataset_split=split,
                    metric_type=name.removeprefix(prefix),
                    metric_name=name,
                    metric_value=value,
                )
            )
    return results


def _provenance(facts: dict[str, Any]) -> dict[str, Any]:
    """The study behind the model, in the card's front matter (no secrets: URL redacted)."""
    data = facts["data"]
    return {
        "study": facts["study"],
        "trial": facts["trial"],
        "storage": facts["storage"],
        "study_file": facts["study_file"],
        "trainer": facts["trainer"]["ref"],
        "objective": facts["objective"],
        **({"objectives": facts["objectives"]} if len(facts.get("objectives", [])) > 1 else {}),
        "params": facts["params"],
        "seed": facts["seed"],
        "data": {k: data[k] for k in ("path", "sha256", "rows") if k in data},
        "packages": {k: v for k, v in facts["packages"].items() if v},
        "exported_at": facts["exported_at"],
    }


def _task(facts: dict[str, Any]) -> str:
    """The trainer's Hugging Face task (cards written before trainers named one: text)."""
    return str(facts.get("task") or "text-classification")


# How a card says to load the folder, by the trainer's task.
_LOADING = {
    "text-classification": (
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        'model = AutoModelForSequenceClassification.from_pretrained("path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")  # truncation=True'
    ),
    "image-classification": (
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
        'model = AutoModelForImageClassification.from_pretrained("path/to/this/folder")\n'
        'processor = AutoImageProcessor.from_pretrained("path/to/this/folder")'
    ),
    "text-generation": (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
        'ids = tokenizer("your prompt", return_tensors="pt").input_ids\n'
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0]))"
    ),
}


def _loading(facts: dict[str, Any], base_id: str) -> str:
    """The card's loading snippet: the task's, or for an adapter, its base then peft."""
    if not _adapter_only(facts):
        return _LOADING.get(_task(facts), _LOADING["text-classification"])
    load = _ADAPTER_LOADING.get(_task(facts), _ADAPTER_LOADING["text-classification"])
    return load.replace("BASE", base_id)


def _adapter_line(facts: dict[str, Any]) -> str:
    adapter = facts.get("adapter") or {"type": "none"}
    if adapter["type"] == "none":
        return ""
    shown = [k for k in ("r", "alpha", "dropout") if k in adapter]
    settings = ", ".join(f"{k}={_fmt(adapter[k])}" for k in shown)
    form = "merged into the base weights" if facts.get("merged") else "in peft's format"
    name = {"lora": "LoRA"}.get(adapter["type"], adapter["type"])
    return f"\nA {name} adapter ({settings}), {form}.\n"


# An adapter loads on its base model, built with the trial's config (its labels).
_ADAPTER_LOADING = {
    "text-classification": (
        "from peft import PeftModel\n"
        "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer\n"
        'config = AutoConfig.from_pretrained("path/to/this/folder")\n'
        'base = AutoModelForSequenceClassification.from_pretrained("BASE", config=config)\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")  # truncation=True'
    ),
    "image-classification": (
        "from peft import PeftModel\n"
        "from transformers import AutoConfig, AutoImageProcessor\n"
        "from transformers import AutoModelForImageClassification\n"
        'config = AutoConfig.from_pretrained("path/to/this/folder")\n'
        'base = AutoModelForImageClassification.from_pretrained("BASE", config=config)\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n'
        'processor = AutoImageProcessor.from_pretrained("path/to/this/folder")'
    ),
    "text-generation": (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        'base = AutoModelForCausalLM.from_pretrained("BASE")\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")'
    ),
}


def _card_body(facts: dict[str, Any]) -> str:
    def table(values: dict[str, Any]) -> str:
        rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in values.items())
        return "| name | value |\n|---|---|\n" + (rows or "| - | - |")

    objective = facts["objective"]
    base = facts["base_model"]
    card = base_model_card_facts(facts)
    base_id = card["id"]
    licence = (
        f"`{card['license']}`, the base model's (as its own card states it)"
        if card["license"]
        else "not stated by the base model's card; check its terms before sharing"
    )
    versions = ", ".join(f"{k} {v}" for k, v in facts["packages"].items() if v)
    return f"""
# {facts["study"]} — trial {facts["trial"]}

Fine-tuned from `{base_id}` (`{base["name"]}` in the
study) by hpo: trial {facts["trial"]} of study `{facts["study"]}` ({facts["storage"]}),
{objective["metric"]} = {_fmt(objective["value"])} ({objective["direction"]}).

Licence: {licence}.
{_adapter_line(facts)}
```python
{_loading(facts, base_id)}
```

## Hyperparameters

{table(facts["params"])}

## Validation metrics

{table(facts["validation_metrics"])}

## Test metrics

{table(facts["test_metrics"]) if facts["test_metrics"] else _NO_TEST_SCORE}

## Data

{table(facts["data"])}

Seed {facts["seed"]}; splits are seeded and stratified by the trainer.

## Provenance

- study file: `{facts["study_file"]}`, trainer `{facts["trainer"]["ref"]}`
- checkpoint: `{facts["checkpoint"]}`
- base model: `{base["path"]}`
- packages: {versions}
- exported: {facts["exported_at"]}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return f"`{json.dumps(value)}`"
    return str(value)
