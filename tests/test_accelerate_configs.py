"""The shipped Accelerate configs parse, use keys Accelerate knows, and turn into the intended plugins.

Nothing is launched: each YAML goes through Accelerate's own loader, the `accelerate launch` argument
validation and the launcher's environment preparation, and the DeepSpeed / FSDP plugins are built from
that environment exactly as they would be inside the training processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    patch_environment,
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate_configs"

EXPECTED_TYPE = {
    "single_gpu": DistributedType.NO,
    "multi_gpu": DistributedType.MULTI_GPU,
    "deepspeed_zero2": DistributedType.DEEPSPEED,
    "deepspeed_zero3": DistributedType.DEEPSPEED,
    "deepspeed_zero3_offload": DistributedType.DEEPSPEED,
    "fsdp2": DistributedType.FSDP,
    "multi_node": DistributedType.DEEPSPEED,
}

# name in the YAML -> (zero_stage, offload device for optimizer and params)
ZERO = {
    "deepspeed_zero2": (2, "none"),
    "deepspeed_zero3": (3, "none"),
    "deepspeed_zero3_offload": (3, "cpu"),
    "multi_node": (3, "none"),
}


def config_path(name: str) -> str:
    return str(CONFIG_DIR / f"{name}.yaml")


def launch_args(name: str, *extra: str):
    """What `accelerate launch --config_file <name>.yaml <extra> train.py` resolves to, without launching."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", config_path(name), *extra, "train.py", "--max_steps", "1"])
    args, defaults, _ = _validate_launch_command(args)
    # As `accelerate.commands.launch.launch_command` does before starting the DeepSpeed launcher.
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    return args


def test_the_config_directory_ships_exactly_the_documented_files():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED_TYPE)
    readme = (CONFIG_DIR / "README.md").read_text()
    for name in EXPECTED_TYPE:
        assert f"{name}.yaml" in readme


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_config_loads_with_accelerate_and_matches_its_name(name):
    config = load_config_from_file(config_path(name))
    assert isinstance(config, ClusterConfig)  # a local-machine config with only keys Accelerate knows
    assert config.distributed_type == EXPECTED_TYPE[name]
    assert config.mixed_precision == "bf16"
    assert config.use_cpu is False
    raw = yaml.safe_load(Path(config_path(name)).read_text())
    assert set(raw) <= set(ClusterConfig.__dataclass_fields__)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_nested_keys_are_real_launch_options(name):
    """Nested deepspeed/fsdp keys become `accelerate launch` options; a typo would be silently ignored."""
    options = {action.dest for action in launch_command_parser()._actions}
    config = load_config_from_file(config_path(name))
    nested = list(config.deepspeed_config) + list(config.fsdp_config)
    unknown = [key for key in nested if key not in options]
    assert unknown == []


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_launch_resolves_to_the_intended_launcher(name):
    extra = ("--machine_rank", "1") if name == "multi_node" else ("--main_process_port", "0")
    args = launch_args(name, *extra)
    assert args.mixed_precision == "bf16"
    assert args.use_deepspeed is (EXPECTED_TYPE[name] == DistributedType.DEEPSPEED)
    assert args.use_fsdp is (EXPECTED_TYPE[name] == DistributedType.FSDP)
    assert args.multi_gpu is (EXPECTED_TYPE[name] == DistributedType.MULTI_GPU)
    expected_processes = {"single_gpu": 1, "multi_node": 16}.get(name, 8)
    assert args.num_processes == expected_processes


def test_num_processes_can_be_overridden_on_the_command_line():
    args = launch_args("deepspeed_zero3", "--num_processes", "2", "--main_process_port", "0")
    assert args.num_processes == 2


@pytest.mark.parametrize("name", sorted(ZERO))
def test_deepspeed_plugin_built_from_the_launch_environment(name):
    stage, offload = ZERO[name]
    extra = ("--machine_rank", "1") if name == "multi_node" else ("--main_process_port", "0")
    args = launch_args(name, *extra)
    _, env = prepare_deepspeed_cmd_env(args)
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == offload
    assert zero["offload_param"]["device"] == offload
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
    assert plugin.zero3_init_flag is (stage == 3)
    # Left to the recipe (Accelerator / TrainingArguments) through DeepSpeed's "auto".
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"


def test_fsdp2_plugin_built_from_the_launch_environment():
    args = launch_args("fsdp2", "--main_process_port", "0")
    env = prepare_multi_gpu_env(args)
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # full shard
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.activation_checkpointing is False


def test_multi_node_template_runs_one_torchrun_per_node():
    raw = yaml.safe_load(Path(config_path("multi_node")).read_text())
    assert raw["num_machines"] == 2 and raw["num_processes"] == 16 and raw["machine_rank"] == 0
    assert raw["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"

    args = launch_args("multi_node", "--machine_rank", "1", "--main_process_ip", "10.1.2.3")
    prepare_deepspeed_cmd_env(args)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    # Accelerate passes the main node as torchrun's master address or as its rendezvous endpoint.
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "10.1.2.3:29500"
