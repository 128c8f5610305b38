"""sppo_bench.verl_plugin against the real verl 0.9.1 package, on a CPU.

Runs in the environment that ``.ci/run`` builds (``.venv-verl``: CPU torch, verl 0.9.1, this
project installed editable); the main test run does not collect this folder. The trainer tests
drive verl's own ``_compute_advantage`` with an in-memory stand-in for TransferQueue's
``kv_batch_get`` / ``kv_batch_put`` (the only I/O the method does); the rest is verl's code.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# (a submodule, not "verl": in the main environment this folder itself could pass for "verl")
pytest.importorskip(
    "verl.trainer.ppo.core_algos",
    reason="verl 0.9.1 is not installed here; `.ci/run` builds .venv-verl and runs these there",
)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transfer_queue  # noqa: E402
import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tensordict.tensorclass import NonTensorStack  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402
from verl.trainer.ppo.v1 import get_trainer_cls  # noqa: E402
from verl.trainer.ppo.v1.trainer_base import PPOTrainer  # noqa: E402
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.workers.utils.padding import response_from_nested  # noqa: E402

from sppo_bench.core import AdvantageInput, compute_advantages  # noqa: E402
from sppo_bench.errors import UserError  # noqa: E402
from sppo_bench.verl_plugin import (  # noqa: E402
    SPPOTrainerSync,
    critic_values,
    sppo_advantage_return,
    sppo_critic_loss,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


def verl_config(*overrides: str) -> DictConfig:
    """verl's own ``ppo_trainer`` config (as ``python -m verl.trainer.main_ppo`` composes it)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


class FakeTransferQueue:
    """Rows by key, fields by name: what ``kv_batch_get`` / ``kv_batch_put`` read and write.

    Tensor fields come back as jagged nested tensors ``[B, L_b]`` and other fields as a
    ``NonTensorStack``, in the order of ``keys``; fields a row does not have are left out.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def kv_batch_get(
        self, keys: list[str], partition_id: str, select_fields: list[str] | None = None
    ) -> TensorDict:
        names = select_fields if select_fields is not None else list(self.rows[keys[0]])
        out: dict[str, Any] = {}
        for name in names:
            if name not in self.rows[keys[0]]:
                continue
            values = [self.rows[key][name] for key in keys]
            out[name] = (
                nested(values) if isinstance(values[0], torch.Tensor) else NonTensorStack(*values)
            )
        return TensorDict(out, batch_size=[len(keys)])

    def kv_batch_put(
        self, keys: list[str], partition_id: str, fields: TensorDict | None = None, **_: Any
    ) -> KVBatchMeta:
        for name in fields.keys():
            for key, row in zip(keys, fields[name].unbind(), strict=True):
                self.rows[key][name] = row.clone()
        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id)

    def get(self, keys: list[str], name: str) -> list[torch.Tensor]:
        return [self.rows[key][name] for key in keys]


def rollout_batch(seed: int, groups: int = 3, n: int = 4) -> tuple[FakeTransferQueue, dict]:
    """``groups`` prompts x ``n`` responses of random lengths, stored as verl's trainer leaves
    them before ``_compute_advantage``: rewards on the last response token, and the critic's
    values after ``_compute_values`` (its output over prompt + response, cut by verl's own
    ``response_from_nested``). Returns the store and the per-row truth."""
    gen = torch.Generator().manual_seed(seed)
    store = FakeTransferQueue()
    keys, prompt_lens, resp_lens, full_values, reward = [], [], [], [], []
    for g in range(groups):
        prompt_len = int(torch.randint(1, 7, (1,), generator=gen))
        for i in range(n):
            resp_len = int(torch.randint(1, 9, (1,), generator=gen))
            key = f"uid{g}_{i}_0"  # verl's "{uid}_{session}_{turn}": sample i, one turn
            r = float(torch.randint(0, 2, (1,), generator=gen))
            scores = torch.zeros(resp_len)
            scores[-1] = r
            store.rows[key] = {
                "uid": f"uid{g}",
                "response_mask": torch.ones(resp_len, dtype=torch.int64),
                "rm_scores": scores,
            }
            keys.append(key)
            prompt_lens.append(prompt_len)
            resp_lens.append(resp_len)
            full_values.append(torch.randn(prompt_len + resp_len, generator=gen) * 2)
            reward.append(r)
    # what PPOTrainer._compute_values writes back
    values = response_from_nested(
        nested(full_values), nested([torch.ones(n) for n in resp_lens])
    ).unbind()
    for key, row in zip(keys, values, strict=True):
        store.rows[key]["values"] = row.clone()
    truth = {
        "keys": keys,
        "resp_lens": resp_lens,
        "reward": torch.tensor(reward),
        # the critic's logit at the last prompt token
        "prompt_logit": torch.stack(
            [v[p - 1] for v, p in zip(full_values, prompt_lens, strict=True)]
        ),
    }
    return store, truth


def padded(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def run_compute_advantage(
    trainer_cls: type, config: DictConfig, store, keys, monkeypatch, metrics: dict | None = None
):
    monkeypatch.setattr(transfer_queue, "kv_batch_get", store.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", store.kv_batch_put)
    trainer = trainer_cls.__new__(trainer_cls)  # no Ray, no workers: only the advantage step
    trainer.config = config
    batch = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train")
    trainer._compute_advantage(batch, {} if metrics is None else metrics)


# --- the entry point ---------------------------------------------------------------------------


def _fresh_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_verl_is_the_release_the_plugin_is_written_for():
    assert verl.__version__ == "0.9.1"


def test_entry_point_is_declared_and_installed():
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert found.get("sppo") == "sppo_bench.verl_plugin"


def test_import_verl_registers_sppo_estimator_and_sync_trainer():
    code = (
        "import sys, verl\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "fn = R.get('sppo')\n"
        "print(getattr(fn, '__module__', None), get_trainer_cls('sync').__name__,\n"
        "      'gymnasium' in sys.modules, 'sppo_bench.control' in sys.modules)\n"
    )
    assert _fresh_python(code) == "sppo_bench.verl_plugin SPPOTrainerSync False False"
    # the entry point is what registers it: with verl's plugin loading off, nothing is there
    off = _fresh_python(code, VERL_USE_EXTERNAL_PLUGINS="none")
    assert off == "None PPOTrainerSync False False"
    # importing the plugin first (it imports verl, which loads the plugin) works as well
    first = _fresh_python("import sppo_bench.verl_plugin\n" + code)
    assert first == "sppo_bench.verl_plugin SPPOTrainerSync False False"


def test_sync_mode_returns_the_plugin_trainer():
    assert get_trainer_cls("sync") is SPPOTrainerSync
    assert issubclass(SPPOTrainerSync, PPOTrainerSync)
    assert get_trainer_cls("colocate_async") is not SPPOTrainerSync


# --- the estimator -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_estimator_is_sppo_bench_core_sppo(seed):
    store, truth = rollout_batch(seed)
    keys = truth["keys"]
    rewards = padded(store.get(keys, "rm_scores"))
    mask = padded(store.get(keys, "response_mask"))
    values = padded(store.get(keys, "values"))
    fn = core_algos.get_adv_estimator_fn("sppo")
    assert fn is sppo_advantage_return
    advantages, returns = fn(
        token_level_rewards=rewards, response_mask=mask, values=values, config=None, index=None
    )
    expected = compute_advantages(
        "sppo", AdvantageInput(rewards=rewards, mask=mask, value_logits=truth["prompt_logit"])
    )
    assert torch.equal(advantages, expected.advantages)
    closed = (truth["reward"] - torch.sigmoid(truth["prompt_logit"])).unsqueeze(-1) * mask
    torch.testing.assert_close(advantages, closed, rtol=0, atol=1e-6)
    assert torch.equal(returns, truth["reward"].unsqueeze(-1) * mask)
    assert torch.all(advantages[mask == 0] == 0)


def test_verl_compute_advantage_with_values_in_reach():
    store, truth = rollout_batch(11)
    keys = truth["keys"]
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": padded(store.get(keys, "rm_scores")),
            "response_mask": padded(store.get(keys, "response_mask")),
        }
    )
    config = verl_config("algorithm.adv_estimator=sppo", "critic.enable=True").algorithm
    with critic_values(padded(store.get(keys, "values"))):
        out = compute_advantage(data, adv_estimator="sppo", config=config)
    mask = data.batch["response_mask"]
    closed = (truth["reward"] - torch.sigmoid(truth["prompt_logit"])).unsqueeze(-1) * mask
    torch.testing.assert_close(out.batch["advantages"], closed, rtol=0, atol=1e-6)


def test_estimator_without_values_is_a_one_line_error():
    store, truth = rollout_batch(3)
    keys = truth["keys"]
    fn = core_algos.get_adv_estimator_fn("sppo")
    with pytest.raises(UserError) as err:
        fn(
            token_level_rewards=padded(store.get(keys, "rm_scores")),
            response_mask=padded(store.get(keys, "response_mask")),
        )
    message = str(err.value)
    assert "\n" not in message and "critic.enable=True" in message


# --- the trainer's advantage step --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_trainer_advantage_step_gives_sppo_bench_core_advantage(seed, monkeypatch):
    store, truth = rollout_batch(seed)
    keys = truth["keys"]
    config = verl_config("algorithm.adv_estimator=sppo", "critic.enable=True")
    run_compute_advantage(SPPOTrainerSync, config, store, keys, monkeypatch)
    mask = padded(store.get(keys, "response_mask"))
    rewards = padded(store.get(keys, "rm_scores"))
    expected = compute_advantages(
        "sppo", AdvantageInput(rewards=rewards, mask=mask, value_logits=truth["prompt_logit"])
    )
    advantages = store.get(keys, "advantages")  # written back nested, one row per response
    returns = store.get(keys, "returns")
    for b, length in enumerate(truth["resp_lens"]):
        assert advantages[b].shape == (length,)
        assert torch.equal(advantages[b], expected.advantages[b, :length])
        assert torch.equal(returns[b], torch.full((length,), float(truth["reward"][b])))


@pytest.mark.parametrize("estimator", ["gae", "grpo"])
def test_trainer_advantage_step_is_upstream_for_other_estimators(estimator, monkeypatch):
    store, truth = rollout_batch(5)
    keys = truth["keys"]
    config = verl_config(f"algorithm.adv_estimator={estimator}", "actor_rollout_ref.rollout.n=4")
    upstream = copy.deepcopy(store)
    run_compute_advantage(SPPOTrainerSync, config, store, keys, monkeypatch)
    run_compute_advantage(PPOTrainerSync, config, upstream, keys, monkeypatch)
    for name in ("advantages", "returns"):
        for ours, theirs in zip(store.get(keys, name), upstream.get(keys, name), strict=True):
            assert torch.equal(ours, theirs)
    # and that path really is verl's estimator, not SPPO
    mask = padded(store.get(keys, "response_mask"))
    rewards = padded(store.get(keys, "rm_scores"))
    if estimator == "gae":
        reference, _ = core_algos.compute_gae_advantage_return(
            rewards, padded(store.get(keys, "values")), mask, gamma=1.0, lam=1.0
        )
    else:
        uids = [store.rows[k]["uid"] for k in keys]
        reference, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, index=uids)
    got = padded(store.get(keys, "advantages"))
    torch.testing.assert_close(got, reference * mask, rtol=0, atol=1e-6)


# --- init: the critic loss and the config check ------------------------------------------------


class RecordingWorkerGroup:
    def __init__(self) -> None:
        self.loss_fns: list[Any] = []

    def set_loss_fn(self, loss_fn: Any) -> None:
        self.loss_fns.append(loss_fn)


def _fake_upstream_init(self) -> None:
    """PPOTrainer.init without Ray: it ends with the critic group holding verl's value loss."""
    self.critic_wg = RecordingWorkerGroup()
    self.critic_wg.set_loss_fn("verl value_loss")


def test_init_installs_bce_critic_loss_for_sppo_only(monkeypatch):
    monkeypatch.setattr(PPOTrainer, "init", _fake_upstream_init)
    for overrides, installed in [
        (
            ("algorithm.adv_estimator=sppo", "critic.enable=True"),
            ["verl value_loss", sppo_critic_loss],
        ),
        (("algorithm.adv_estimator=gae",), ["verl value_loss"]),
        (("algorithm.adv_estimator=grpo", "critic.enable=True"), ["verl value_loss"]),
    ]:
        trainer = SPPOTrainerSync.__new__(SPPOTrainerSync)
        trainer.config = verl_config(*overrides)
        trainer.init()
        assert trainer.critic_wg.loss_fns == installed


@pytest.mark.parametrize("enable", [None, False])
def test_sppo_without_critic_is_a_one_line_error(enable, monkeypatch):
    monkeypatch.setattr(PPOTrainer, "init", _fake_upstream_init)
    overrides = ["algorithm.adv_estimator=sppo"]
    if enable is not None:
        overrides.append(f"critic.enable={enable}")
    trainer = SPPOTrainerSync.__new__(SPPOTrainerSync)
    trainer.config = verl_config(*overrides)
    with pytest.raises(UserError) as err:
        trainer.init()
    assert str(err.value) == (
        f"algorithm.adv_estimator=sppo needs critic.enable=True (got critic.enable={enable})"
    )
    assert not hasattr(trainer, "critic_wg")  # refused before anything was built


# --- the critic loss ---------------------------------------------------------------------------


def critic_micro_batch(seed: int, batch: int = 6, **non_tensor: Any):
    """A critic micro-batch as verl's value-head engine sees it: nested prompts / responses /
    returns / response_mask, and the head's output over prompt + response as a nested tensor
    over one packed ``[total_tokens]`` leaf (as FSDPEngineWithValueHead builds it)."""
    gen = torch.Generator().manual_seed(seed)
    p_lens = torch.randint(1, 7, (batch,), generator=gen)
    r_lens = torch.randint(1, 9, (batch,), generator=gen)
    reward = torch.randint(0, 2, (batch,), generator=gen).float()
    packed = (torch.randn(int((p_lens + r_lens).sum()), generator=gen) * 2).requires_grad_()
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), (p_lens + r_lens).cumsum(0)])
    values = torch.nested.nested_tensor_from_jagged(packed, offsets)
    data = TensorDict(
        {
            "prompts": nested([torch.randint(0, 100, (int(p),)) for p in p_lens]),
            "responses": nested([torch.randint(0, 100, (int(r),)) for r in r_lens]),
            "returns": nested(
                [torch.full((int(r),), float(x)) for r, x in zip(r_lens, reward, strict=True)]
            ),
            "response_mask": nested([torch.ones(int(r), dtype=torch.int64) for r in r_lens]),
        },
        batch_size=[batch],
    )
    tu.assign_non_tensor(data, **non_tensor)
    last_prompt = offsets[:-1] + p_lens - 1  # index of each row's last prompt token in `packed`
    return {"values": values}, data, packed, last_prompt, reward


@pytest.mark.parametrize("seed", range(3))
def test_critic_loss_is_bce_with_logits_at_the_last_prompt_token(seed):
    model_output, data, packed, last_prompt, reward = critic_micro_batch(seed)
    loss, metrics = sppo_critic_loss(model_output=model_output, data=data, dp_group=None)
    expected = F.binary_cross_entropy_with_logits(packed[last_prompt], reward)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    expected = expected.detach()
    loss.backward()
    grad = torch.zeros_like(packed)
    grad[last_prompt] = (torch.sigmoid(packed[last_prompt].detach()) - reward) / len(reward)
    torch.testing.assert_close(packed.grad, grad, rtol=1e-5, atol=1e-7)
    assert metrics["critic/vf_loss"].aggregate() == pytest.approx(expected.item(), rel=1e-5)


def test_critic_loss_adds_up_over_micro_batches_and_ranks():
    """With verl's global normalisation (global_batch_size sequences, dp_size ranks whose
    gradients are averaged), the pieces add up to the mean BCE of the whole mini-batch."""
    pieces = [critic_micro_batch(s, batch=3, global_batch_size=12, dp_size=2) for s in range(4)]
    per_rank = [0.0, 0.0]
    logits, targets = [], []
    for i, (output, data, packed, last, reward) in enumerate(pieces):
        loss, _ = sppo_critic_loss(model_output=output, data=data)
        per_rank[i % 2] += float(loss.detach())
        logits.append(packed[last].detach())
        targets.append(reward)
    whole = F.binary_cross_entropy_with_logits(torch.cat(logits), torch.cat(targets))
    assert sum(per_rank) / 2 == pytest.approx(float(whole), rel=1e-5)


def test_critic_loss_is_picklable_for_the_worker_group():
    import pickle

    assert pickle.loads(pickle.dumps(sppo_critic_loss)) is sppo_critic_loss


# --- the launch scripts ------------------------------------------------------------------------


def tiny_local_model(path: Path) -> Path:
    """A config + tokenizer folder (no weights): what verl's config check reads of a model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "a": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(path)
    Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=8,
        architectures=["Qwen2ForCausalLM"],
    ).save_pretrained(path)
    return path


PAPER_SETTINGS = {
    "algorithm.adv_estimator": "sppo",
    "algorithm.use_kl_in_reward": False,
    "critic.enable": True,
    "actor_rollout_ref.rollout.n": 1,
    "actor_rollout_ref.rollout.temperature": 0.6,
    "actor_rollout_ref.rollout.val_kwargs.n": 16,
    "actor_rollout_ref.rollout.val_kwargs.temperature": 0.6,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.clip_ratio": 0.2,
    "actor_rollout_ref.actor.clip_ratio_c": 3.0,
    "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.entropy_coeff": 0,
    "actor_rollout_ref.actor.use_kl_loss": False,
    "actor_rollout_ref.actor.optim.clip_grad": 1.0,
    "data.max_response_length": 8192,
    "trainer.critic_warmup": 0,
    "trainer.use_v1": True,
    "trainer.v1.trainer_mode": "sync",
}
SCRIPTS = {
    "sppo_r1_distill_1.5b.sh": {
        "data.train_batch_size": 256,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 128,
        "data.max_prompt_length": 1024,
        "critic.optim.lr": 5e-6,
        "actor_rollout_ref.actor.optim.weight_decay": 0.01,
        "trainer.total_training_steps": 1000,
    },
    "sppo_r1_distill_7b_critic_1.5b.sh": {
        "data.train_batch_size": 512,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 32,
        "data.max_prompt_length": 2048,
        "critic.optim.lr": 1e-5,
        "actor_rollout_ref.actor.optim.weight_decay": 0.1,
        "trainer.total_training_steps": 200,
    },
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_launch_script_composes_and_passes_verls_config_check(script, tmp_path):
    """The script's overrides, composed by verl's own Hydra entry point (``--cfg job`` prints
    the config instead of training), carry the paper's settings and pass ``validate_config``
    for one node of 8 GPUs. A tiny local model stands in for the Hub checkpoints."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    model = str(tiny_local_model(tmp_path / "model"))
    env = {**os.environ, "PYTHON": sys.executable, "POLICY": model, "CRITIC": model}
    env["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        ["bash", str(REPO / "llm" / "verl" / script), "--cfg", "job"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = OmegaConf.create(result.stdout)
    for key, value in {**PAPER_SETTINGS, **SCRIPTS[script]}.items():
        assert OmegaConf.select(config, key) == value, key
    assert config.reward.custom_reward_function.path == str(REPO / "llm" / "verl" / "reward.py")
    # micro-batch token limits: the actor's, and the critic's as verl's v1 trainer reads it
    tokens = 2 * (SCRIPTS[script]["data.max_prompt_length"] + 8192)
    assert config.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == tokens
    assert config.critic.ppo_infer_max_token_len_per_gpu == 2 * tokens
    assert not need_reference_policy(config) and need_critic(config)
    validate_config(config, use_reference_policy=False, use_critic=True)
