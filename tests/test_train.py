"""Training runs end to end on the CPU: from scratch, LoRA fp32, LoRA NF4, resume, MLflow."""

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from mlflow.tracking import MlflowClient
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hamdam.data.records import load_dialogues
from hamdam.errors import HamdamError, ModelLoadError
from hamdam.evaluation.perplexity import perplexity
from hamdam.models.export import load_exported
from hamdam.models.tiny import ensure_tiny_gpt2
from hamdam.training.run import train
from hamdam.training.tracking import file_sha256

from conftest import REPO, SAMPLE, TINY_SCRATCH

HELDOUT = REPO / "corpus" / "eval_fa.jsonl"

QUICK = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "callbacks.rich_progress_bar=null"]


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """The gpt2-fa stand-in, built once per session from the sample corpus."""
    from hamdam.data.records import load_dialogues

    texts = [t for d in load_dialogues(SAMPLE) for t in d.texts()]
    return ensure_tiny_gpt2(texts, str(tmp_path_factory.mktemp("models") / "tiny-gpt2-fa"))


def smoke(tiny_gpt2_dir, *extra):
    return ["experiment=smoke", f"model.name_or_path={tiny_gpt2_dir}", f"data.path={SAMPLE}", *QUICK, *extra]


def mlflow_run(root: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def test_scratch_run_exports_a_model_and_a_complete_mlflow_run(compose_cfg, tmp_path):
    cfg = compose_cfg(f"data.path={SAMPLE}", *TINY_SCRATCH, f"heldout.path={HELDOUT}")
    metrics = train(cfg)
    assert metrics["val/ppl"] == pytest.approx(torch.exp(torch.tensor(metrics["val/loss"])).item(), rel=1e-4)

    model_dir = tmp_path / "run" / "model"
    assert {"config.json", "model.safetensors", "hamdam.json", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
    meta = json.loads((model_dir / "hamdam.json").read_text())
    assert meta["kind"] == "full" and meta["markers"]["assistant"] == "<|assistant|>"
    assert json.loads((tmp_path / "runs" / "latest.json").read_text())["model_dir"] == str(model_dir)
    exported = load_exported(model_dir)
    assert exported.model.config.n_layer == 1
    assert len(exported.chat_format.tokenizer) <= 600

    client, runs = mlflow_run(tmp_path)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone.n_layer"] == "1"
    assert run.data.params["trainer.max_epochs"] == "1"
    assert run.data.params["model.lora"] == "None"
    assert run.data.tags["hamdam.data_sha256"] == file_sha256(SAMPLE)
    assert run.data.tags["hamdam.safety_enabled"] == "true"
    # Params are the config, never the dialogue text.
    first = json.loads(SAMPLE.read_text(encoding="utf-8"))[0]
    assert not any(first["instruction"] in v or first["response"][:20] in v for v in run.data.params.values())
    assert {"train/loss_step", "train/loss_epoch", "val/loss", "val/ppl", "train/lr"} <= set(run.data.metrics)
    # Lightning's ThroughputMonitor counting non-pad tokens, under hamdam's names (TokenThroughput).
    assert run.data.metrics["train/tokens_per_sec"] > 0 and run.data.metrics["train/step_seconds"] > 0
    # val/* is the training corpus's split; heldout/* the held-out set, measured on the model as exported.
    again = perplexity(exported.model, exported.chat_format, load_dialogues(HELDOUT), 16)
    assert run.data.metrics["heldout/ppl"] == pytest.approx(again.perplexity, rel=1e-5) == metrics["heldout/ppl"]
    assert run.data.metrics["heldout/ppl_low"] < again.perplexity < run.data.metrics["heldout/ppl_high"]
    assert json.loads((tmp_path / "run" / "heldout.json").read_text())["dialogues"] == len(load_dialogues(HELDOUT))
    steps = client.get_metric_history(run.info.run_id, "train/loss_step")
    assert len(steps) >= 2  # per step, not only per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"resolved_config.yaml", "model"} <= artifacts
    assert {"model/model.safetensors", "model/hamdam.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "model")
    }


def test_lora_fp32_saves_a_peft_adapter_with_trained_weights(compose_cfg, tmp_path, tiny_gpt2_dir):
    train(compose_cfg(*smoke(tiny_gpt2_dir), "model.backbone.gradient_checkpointing=true", "~logger"))
    model_dir = tmp_path / "run" / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "hamdam.json"} <= names
    assert "model.safetensors" not in names  # the adapter only, not a copy of the base
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    peft_model = PeftModel.from_pretrained(base, model_dir)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: it trained
    assert json.loads((model_dir / "adapter_config.json").read_text())["r"] == 8

    # Checkpoints hold only trainable (LoRA) weights plus the optimizer state.
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"]


def test_gpt2_fa_persona_header_reuses_its_unused_s_token(compose_cfg, tmp_path, tiny_gpt2_dir):
    """Records that say who speaks to whom train gpt2-fa with the persona header, on a token its
    vocabulary already has (<s>): no new embedding row, so LoRA alone learns it."""
    records = [{**d.to_record(), "persona": "father", "listener": "son"} for d in load_dialogues(SAMPLE)]
    path = tmp_path / "who.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    train(
        compose_cfg("experiment=smoke", f"model.name_or_path={tiny_gpt2_dir}", f"data.path={path}", *QUICK, "~logger")
    )
    exported = load_exported(tmp_path / "run" / "model")
    fmt = exported.chat_format
    assert exported.meta["markers"]["persona"] == "<s>" and fmt.persona_id == 0  # gpt2-fa's <s> is id 0
    assert fmt.header("father", "son")[0] == 0 and fmt.header("father", "son")[-1] == fmt.end_id
    assert exported.model.get_input_embeddings().weight.shape[0] == len(fmt.tokenizer)  # nothing added


def test_nf4_lora_trains_on_cpu_and_saves_a_loadable_adapter(compose_cfg, tmp_path, tiny_gpt2_dir):
    cfg = compose_cfg(*smoke(tiny_gpt2_dir), "model.quantization=nf4", "trainer.limit_train_batches=2", "~logger")
    train(cfg)
    model_dir = tmp_path / "run" / "model"
    meta = json.loads((model_dir / "hamdam.json").read_text())
    assert meta["backbone"]["quantization"] == "nf4"
    exported = load_exported(model_dir)
    linear4 = [m for m in exported.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and linear4[0].weight.quant_type == "nf4"
    weights = load_file(model_dir / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)


def test_resume_from_last_continues_the_step_count(compose_cfg, tmp_path):
    common = [f"data.path={SAMPLE}", *TINY_SCRATCH, "~logger", "paths.runs_dir=" + str(tmp_path / "runs")]
    first = compose_cfg(*common, f"paths.output_dir={tmp_path / 'runs' / 'a'}", "trainer.max_epochs=1")
    train(first)
    steps_one = torch.load(tmp_path / "runs/a/checkpoints/last.ckpt", weights_only=False)["global_step"]
    second = compose_cfg(
        *common, f"paths.output_dir={tmp_path / 'runs' / 'b'}", "trainer.max_epochs=2", "ckpt_path=last"
    )
    train(second)
    ckpt = torch.load(tmp_path / "runs/b/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 * steps_one
    assert ckpt["epoch"] == 1
    # The resumed run reuses the first run's tokenizer, so ids keep their meaning.
    assert (tmp_path / "runs/a/tokenizer/tokenizer.json").read_bytes() == (
        tmp_path / "runs/b/tokenizer/tokenizer.json"
    ).read_bytes()


def test_last_ckpt_is_every_epoch_whatever_the_best_and_resume_checks_max_epochs(compose_cfg, tmp_path):
    runs = tmp_path / "runs"
    common = [f"data.path={SAMPLE}", *TINY_SCRATCH, "~logger", f"paths.runs_dir={runs}"]
    # "Best" is the highest validation loss here, so the best checkpoint stays behind while training
    # goes on; last.ckpt must follow training, not the best.
    train(compose_cfg(*common, f"paths.output_dir={runs / 'a'}", "trainer.max_epochs=3",
                      "callbacks.model_checkpoint.mode=max"))  # fmt: skip
    last = torch.load(runs / "a/checkpoints/last.ckpt", weights_only=False)
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3 and last["epoch"] == 2
    assert not list((runs / "a/checkpoints").glob(".*.tmp"))

    fewer = compose_cfg(*common, f"paths.output_dir={runs / 'b'}", "trainer.max_epochs=2", "ckpt_path=last")
    with pytest.raises(HamdamError, match=r"already trained 3 epochs, more than trainer.max_epochs=2.*above 3"):
        train(fewer)
    assert not (runs / "b").exists()  # checked before anything is written

    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((runs / "a/checkpoints/last.ckpt").read_bytes()[:5000])  # a kill mid-write
    with pytest.raises(HamdamError, match="cannot be read as a Lightning checkpoint.*truncated"):
        train(compose_cfg(*common, f"paths.output_dir={runs / 'c'}", f"ckpt_path={broken}"))


def test_resume_without_any_checkpoint_is_a_clear_error(compose_cfg):
    with pytest.raises(HamdamError, match="ckpt_path=last: no earlier run of model 'tiny_dialogue'"):
        train(compose_cfg(f"data.path={SAMPLE}", *TINY_SCRATCH, "~logger", "ckpt_path=last"))


def test_a_crash_inside_training_marks_the_mlflow_run_failed(compose_cfg, tmp_path):
    cfg = compose_cfg(f"data.path={SAMPLE}", *TINY_SCRATCH, "model.optimizer.lr=-1")
    with pytest.raises(ValueError, match="learning rate"):
        train(cfg)
    _, (run,) = mlflow_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "learning rate" in run.data.tags["hamdam.error"]
    assert not (tmp_path / "runs" / "latest.json").exists()


def test_missing_local_model_directory(compose_cfg, tmp_path):
    cfg = compose_cfg("model=gpt2_fa_qlora", f"model.name_or_path={tmp_path}/no-such-model", f"data.path={SAMPLE}")
    with pytest.raises(ModelLoadError, match="no-such-model' does not exist"):
        train(cfg)


def test_unreachable_hub_model_names_the_fixes(compose_cfg):
    cfg = compose_cfg("model=gpt2_fa_qlora", f"data.path={SAMPLE}", "~logger")
    with pytest.raises(ModelLoadError) as err:
        train(cfg)  # HF_HUB_OFFLINE=1 in tests: the hub is never asked
    message = str(err.value)
    assert "HooshvareLab/gpt2-fa" in message
    assert "model.name_or_path=/path/to/" in message and "HF_HUB_OFFLINE=1" in message


def test_git_state_tags_the_commit_and_dirtiness(tmp_path):
    import subprocess

    from hamdam.training.tracking import git_state

    assert git_state(tmp_path) == {}  # not a repository: no tags rather than an error
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("a")
    subprocess.run([*git, "add", "f"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"mlflow.source.git.commit": head, "hamdam.git_dirty": "false"}
    (tmp_path / "f").write_text("b")
    assert git_state(tmp_path)["hamdam.git_dirty"] == "true"


def test_disabling_safety_is_recorded_in_the_mlflow_run(compose_cfg, tmp_path):
    train(compose_cfg(f"data.path={SAMPLE}", *TINY_SCRATCH, *QUICK, "safety.enabled=false"))
    _, (run,) = mlflow_run(tmp_path)
    assert run.data.tags["hamdam.safety_enabled"] == "false"
    assert run.data.params["safety.enabled"] == "False"


def test_init_from_continues_an_exported_adapter(compose_cfg, tmp_path, tiny_gpt2_dir):
    def continue_from(model_dir, steps, out):
        overrides = [f"data.path={SAMPLE}", "~logger", f"init_from={model_dir}", f"trainer.max_steps={steps}"]
        train(compose_cfg(*overrides, f"export_dir={out}", "callbacks.rich_progress_bar=null"))

    train(compose_cfg(*smoke(tiny_gpt2_dir), "~logger", f"export_dir={tmp_path / 'a'}"))
    first = load_file(tmp_path / "a" / "adapter_model.safetensors")
    # Zero steps: the continued model is exactly the one it started from.
    continue_from(tmp_path / "a", steps=0, out=tmp_path / "b")
    same = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert first.keys() == same.keys() and all(torch.equal(first[k], same[k]) for k in first)
    meta_a = json.loads((tmp_path / "a" / "hamdam.json").read_text())
    meta_b = json.loads((tmp_path / "b" / "hamdam.json").read_text())
    assert meta_b["backbone"] == meta_a["backbone"] and meta_b["markers"] == meta_a["markers"]
    # Some steps: it moves on from there.
    continue_from(tmp_path / "a", steps=2, out=tmp_path / "c")
    moved = load_file(tmp_path / "c" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], moved[k]) for k in first)


def test_without_a_terminal_progress_is_a_log_line_every_n_steps(compose_cfg, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hamdam.training.callbacks")
    train(compose_cfg(f"data.path={SAMPLE}", *TINY_SCRATCH, "~logger", "callbacks.progress_log.every_n_steps=4"))
    lines = [r.getMessage() for r in caplog.records if r.name == "hamdam.training.callbacks"]
    assert lines and lines[0].startswith("epoch 0, step 4/12: loss ") and lines[0].endswith(" tokens/s")
    assert all(float(line.split(", ")[-1].removesuffix(" tokens/s")) > 0 for line in lines)  # no logger needed
    assert [int(line.split("step ")[1].split("/")[0]) for line in lines] == [4, 8, 12]
