"""`ddrl` under FSDP2 on CPU processes, for tests: `python tests/fsdp_cpu.py ARGS` under
`accelerate launch` runs `ddrl ARGS` with the denoiser sharded by torch's `fully_shard` on a CPU
device mesh (gloo).

accelerate builds its FSDP2 setup only for accelerator devices: on a CPU-only machine
`accelerate launch --use_fsdp` gives DistributedType.NO (each process alone) and `--cpu` gives
MULTI_CPU (data parallel). So this stands in for accelerate's `prepare(model, optimizer)` with
the same engine, applied as accelerate's transformer-based auto-wrap policy does (each block, then
the root; the blocks of examples/accelerate/fsdp2.yaml, and JointTransformerBlock for SD3);
everything else is ddrl's code under sharding.
"""

import sys

import torch


def shard_on_cpu(accelerator, net, optimizer):
    from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    for m in list(net.modules()):
        if isinstance(m, (BasicTransformerBlock, JointTransformerBlock, ResnetBlock2D)):
            fully_shard(m, mesh=mesh)
    fully_shard(net, mesh=mesh)
    params = [p for p in net.parameters() if p.requires_grad]
    assert all(type(p).__name__ == "DTensor" for p in params)
    # the optimizer switched to the sharded parameters, as accelerate does (same order, one group)
    (group,) = optimizer.param_groups
    assert len(group["params"]) == len(params)
    group["params"] = params
    return net, optimizer


if __name__ == "__main__":
    import ddrl.images.loop as loop
    from ddrl.cli import main

    loop.is_sharded = lambda accelerator: accelerator.num_processes > 1
    loop.shard = shard_on_cpu
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:]))
