"""reducr_jax.plan: the run's programs compiled for abstract TPU topologies (libtpu, [tpu]).

Each xdist worker loads its own libtpu: :func:`reducr_jax.train.topology.prepare_environment`
sets ``ALLOW_MULTIPLE_LIBTPU_LOAD``, ``TPU_SKIP_MDS_QUERY`` and a per-process
``TPU_LOG_DIR`` before it loads.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from reducr_jax.train import chips
from reducr_jax.config import configuration
from reducr_jax.train import device_memory
from reducr_jax import plan
from reducr_jax.plan import plan_inputs
from reducr_jax.plan import plan_programs
from reducr_jax.train import stage1_memory
from reducr_jax.train import topology
from reducr_jax.data import real_specs

pytestmark = pytest.mark.usefixtures("no_compile_cache")   # TPU-topology compiles: kept out of the CPU tests' persistent cache

pytest.importorskip("libtpu", reason="compiling for a TPU topology needs the [tpu] extra")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"topology", "chips", "hbm_bytes_per_chip", "programs", "total_seconds", "chip_hours",
        "fits"}
PROGRAM_KEYS = {"name", "strategy", "calls", "peak_bytes_per_chip", "flops_per_chip",
                "bytes_accessed_per_chip", "seconds_per_call", "fits"}


def _mlp_config(**overrides):
  config = configuration.load_config(os.path.join(ROOT, "configs", "default.py"))
  config.num_steps, config.experts.num_steps = 30, 20
  config.experts.eval_every, config.eval_every = 10, 10
  return configuration.with_overrides(config, overrides)


@pytest.mark.parametrize("topo", ["v5e:2x2", "v4:2x2x1"])
def test_tiny_mlp_plan_fits_with_the_schema_and_counted_calls(topo):
  config = _mlp_config()
  p, extras = plan.make_plan(config, topo)
  assert set(p) == KEYS and all(set(q) == PROGRAM_KEYS for q in p["programs"])
  assert [q["name"] for q in p["programs"]] == [
      "stage1_expert_step", "expert_validation", "loss_table", "train_step", "eval_step"]
  assert p["chips"] == 4 and p["fits"] and p["topology"] == topo
  chip = chips.get(topo.split(":")[0])
  assert p["hbm_bytes_per_chip"] == chip.hbm_bytes
  progs = {q["name"]: q for q in p["programs"]}
  # vmap of all 10 experts fits a chip; calls are the run's: 20 expert steps, 30 steps.
  assert progs["stage1_expert_step"]["strategy"] == "vmap"
  assert progs["stage1_expert_step"]["calls"] == 20 and progs["train_step"]["calls"] == 30
  # Roofline: max(FLOPs / peak, bytes / bandwidth); the total is Σ calls × seconds.
  for q in p["programs"]:
    assert q["seconds_per_call"] == pytest.approx(max(
        q["flops_per_chip"] / chip.peak_bf16_flops,
        q["bytes_accessed_per_chip"] / chip.hbm_bandwidth))
  assert p["total_seconds"] == pytest.approx(
      sum(q["calls"] * q["seconds_per_call"] for q in p["programs"]))
  assert p["chip_hours"] == pytest.approx(p["total_seconds"] * 4 / 3600)
  assert "stage1_expert_step" in plan.format_plan(p, extras)
  json.dumps(p)


@pytest.mark.slow
def test_per_chip_flops_are_the_cpu_programs_share():
  # The same programs compiled for 4 TPU chips and for 1 CPU device with the whole batch:
  # a forward pass's FLOPs split over the chips (the psum-ed sums are negligible).
  config = _mlp_config(**{"experts.strategy": "vmap", "dataset.classes": (0, 1, 2),
                          "dataset.imbalance_class": 1, "model.hidden": (64,)})
  splits = plan_inputs.abstract_splits(config)
  tpu = {p.name: p for p in plan_programs.build_all(
      config, splits, topology.get("v5e:2x2").devices, "tpu")}
  cpu = {p.name: p for p in plan_programs.build_all(config, splits, jax.devices()[:1], "cpu")}
  for name in ("expert_validation", "loss_table", "eval_step"):
    # Each chip's share of the examples (batches are padded to a multiple of the chips).
    share = tpu[name].batch_per_chip / cpu[name].batch_per_chip
    assert 0.25 <= share < 0.26
    assert tpu[name].flops == pytest.approx(cpu[name].flops * share, rel=0.02), name
  # The stacked experts' step, per device, against 4 CPU devices' (same shard each).
  cpu4 = plan_programs.stage1(config, splits, jax.devices()[:4], "cpu")[0]
  assert tpu["stage1_expert_step"].flops == pytest.approx(cpu4.flops, rel=0.05)


def test_loop_bodies_are_multiplied_out():
  # cost_analysis counts a lax.map body once: `map` over C experts × C equals `vmap`.
  small = {"dataset.classes": (0, 1, 2, 3), "model.hidden": (64,),
           "dataset.imbalance_class": 1,
           "experts.losses": "online"}
  splits = plan_inputs.abstract_splits(_mlp_config(**small))
  devices = jax.devices()[:1]
  vmap = plan_programs.stage1(_mlp_config(**small, **{"experts.strategy": "vmap"}), splits,
                              devices, "cpu")[0]
  mapped = plan_programs.stage1(_mlp_config(**small, **{"experts.strategy": "map"}), splits,
                                devices, "cpu")[0]
  assert mapped.strategy == "map" and vmap.strategy == "vmap"
  assert plan_programs.loop_trips("map", 0, 10) == 10
  assert plan_programs.loop_trips("vmap", 5, 10) == 2
  assert mapped.flops == pytest.approx(vmap.flops, rel=0.1)


def _small_resnet_config(**overrides):
  """CIFAR-10's shapes (no data), a ResNet of width 8, two experts (two class groups)."""
  config = configuration.load_config(os.path.join(ROOT, "configs", "cifar10.py"))
  config.model.width, config.model.stage_sizes = 8, (1, 1)
  config.dataset.groups = (0,) * 5 + (1,) * 5
  for k, v in overrides.items():
    section, field = k.split(".")
    config[section][field] = v
  return config


@pytest.mark.slow
def test_a_lower_limit_makes_the_chooser_move_past_what_does_not_fit(monkeypatch):
  # Each candidate's need per chip (compiled peak + one model's share), from the TPU
  # compiles of an impossible budget; then a limit just below vmap's need: the chooser
  # takes the first later candidate within it (or, if none is, says so in one line).
  # Measured with libtpu 0.0.42.1: for MLPs vmap is also the smallest on TPU (its
  # activations are tiny), so the pick may be "nothing fits"; a ResNet-18's is not.
  needs = {}
  real_pick = stage1_memory.pick_strategy

  def spy(compile_fn, num, cands, budget, **kw):
    def record(*cand):
      compiled = compile_fn(*cand)
      mem = device_memory.compiled_memory(compiled)
      peak, arg = mem["peak"], mem["argument"]
      needs[cand] = peak + arg / num + (peak - arg) / stage1_memory.models_in_flight(
          num, *cand[:2])
      return compiled
    return real_pick(record, num, cands, budget, **kw)
  monkeypatch.setattr(stage1_memory, "pick_strategy", spy)
  with pytest.raises(stage1_memory.NothingFits):
    plan.make_plan(_mlp_config(**{"experts.max_memory_gb": 1e-9}), "v5e:2x2")
  vmap = needs[("vmap", 0, 1)]
  assert len(needs) >= 3
  limit = vmap * 0.999
  fitting = [c for c, need in needs.items() if c != ("vmap", 0, 1) and need <= limit]
  config = _mlp_config(**{"experts.max_memory_gb": limit / 2**30})
  if not fitting:
    with pytest.raises(stage1_memory.NothingFits, match="limit"):
      plan.make_plan(config, "v5e:2x2")
  else:
    step = plan.make_plan(config, "v5e:2x2")[1]["programs"][0]
    assert step.strategy == plan_programs.strategy_name(*fitting[0], 10)


def test_nothing_fits_is_one_line_naming_program_peak_limit_and_remedy():
  config = _mlp_config(**{"experts.max_memory_gb": 1e-6})
  with pytest.raises(stage1_memory.NothingFits) as e:
    plan.make_plan(config, "v5e:2x2")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("stage1_expert_step does not fit")
  assert "GiB per chip > the limit 0.00 GiB" in msg


def test_out_of_hbm_compile_counts_as_not_fitting():
  # XLA:TPU refuses a program over HBM at compile time; the chooser reads the sizes.
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (26.84G) exceeds available HBM (15.75G).")
  assert topology.parse_out_of_memory(msg) == pytest.approx((26.84 * 2**30, 15.75 * 2**30))
  assert topology.parse_out_of_memory("INVALID_ARGUMENT: shapes") is None
  # CIFAR-10's shapes (no data), uniform selection, an MLP with 200k hidden units on a
  # large batch of 25 000 images: 20 GB of activations > a v5e chip's 15.75 GiB.
  config = _mlp_config(**{"selection.method": "uniform", "batch_size": 25_000,
                          "model.hidden": (200_000,)})
  config.dataset = real_specs.config_for("cifar10", augment="none")
  with pytest.raises(stage1_memory.NothingFits) as e:
    plan.make_plan(config, "v5e:1x1")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("train_step does not fit")
  assert "the limit 15.75 GiB" in msg and "or ≥ " in msg


@pytest.mark.slow
def test_command_line_exits_2_with_one_line_when_nothing_fits(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "reducr_jax.plan", f"--config={ROOT}/configs/default.py",
       "--topology=v5e:2x2", "--config.experts.max_memory_gb=1e-6",
       f"--output={tmp_path}/plan.json"],
      capture_output=True, text=True, timeout=600, cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "stage1_expert_step does not fit" in errors[0]
  assert not (tmp_path / "plan.json").exists()


def test_bad_topology_is_one_line():
  with pytest.raises(configuration.ConfigError, match="--topology must be like"):
    topology.parse_name("v5e-8")
  assert topology.parse_name("v5:2x2x1") == ("v5p", (2, 2, 1))
  assert chips.get("TPU v5 lite").name == "v5e" and chips.get("TPU v5").name == "v5p"


@pytest.mark.slow
def test_resnet_width8_plan_on_v4():
  # A ResNet (width 8) on CIFAR-10's shapes, no data on disk: RHO-LOSS's one irreducible
  # model in stage 1, 25k train rows → 25 loss-table calls of 1000.
  config = configuration.load_config(os.path.join(ROOT, "configs", "cifar10.py"))
  config.model.width, config.model.stage_sizes = 8, (1, 1)
  config.selection.method = "rho_loss"
  config.eval_batch_size = 1000
  p, _ = plan.make_plan(config, "v4:2x2x1")
  progs = {q["name"]: q for q in p["programs"]}
  assert p["fits"] and progs["loss_table"]["calls"] == 25
  assert progs["train_step"]["calls"] == config.num_steps


@pytest.mark.slow
def test_full_resnet18_train_step_on_a_multi_host_slice():
  # CIFAR-10's ResNet-18, uniform selection (no stage 1), on v5e:4x4: 4 hosts, 16 chips,
  # B = 320 → 20 examples per chip.
  config = configuration.load_config(os.path.join(ROOT, "configs", "cifar10.py"))
  config.selection.method = "uniform"
  p, extras = plan.make_plan(config, "v5e:4x4")
  assert extras["hosts"] == 4 and p["chips"] == 16 and p["fits"]
  assert [q["name"] for q in p["programs"]] == ["train_step", "eval_step"]
  assert extras["programs"][0].batch_per_chip == 20
