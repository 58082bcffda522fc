"""`dctdiff sample`: generate images from a trained model with Ray (one model copy per actor; by default one
actor per GPU of the cluster, one actor on CPUs without GPUs).

    dctdiff sample --checkpoint outputs/runs/demo-dct-.../checkpoint_... --num 64 --output outputs/samples
    dctdiff sample --checkpoint nnet_ema.pth --preset cifar10 --num 50000 --output s3://bucket/samples/cifar10

--checkpoint is one of our checkpoint folders, a training run folder (its newest checkpoint is used),
or a published DCTdiff / U-ViT .pth / .safetensors whose codec settings come from --preset and --set
(e.g. --set data.eta=242.382). Image i is generated from seed --seed-start + i alone, so the output does
not depend on --workers or --batch-size. Writes OUTPUT/{seed:06d}.png and OUTPUT/images.npz.
"""

from __future__ import annotations

from dataclasses import asdict

from dctdiff.commands import options as flags
from dctdiff.core.precision import PRECISIONS
from dctdiff.core.samplers import SAMPLERS
from dctdiff.evaluation.sample_job import SamplingSpec, run
from dctdiff.infra import storage
from dctdiff.infra.logs import configure_logging
from dctdiff.infra.ray_cluster import ClusterLostError, ResourceError
from dctdiff.models.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Run `dctdiff sample`; returns the exit status (2: bad input; 1: the --address cluster was lost)."""
    parser = flags.job_parser("dctdiff sample", __doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder, or published .pth")
    parser.add_argument("--output", required=True, help="folder or URI for the PNGs and images.npz")
    parser.add_argument("--num", type=flags.positive_int, default=64, help="number of images")
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--sampler", choices=SAMPLERS, help="default: the run's cadence.sampler")
    parser.add_argument("--nfe", type=int, help="network evaluations per image (default: the run's cadence.sample_nfe)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1 = off)")
    parser.add_argument("--labels", default="", help="comma-separated class labels, cycled over the images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="network precision (auto: bf16 on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in every actor")
    parser.add_argument(
        "--workers", type=flags.positive_int, help="sampling actors, one model each (default: one per GPU, else 1)"
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, help="default: 1 on a cluster with GPUs, else 0 (0: sample on CPUs)"
    )
    parser.add_argument("--preset", default="demo", help="codec settings for a published checkpoint")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (published checkpoints)"
    )
    flags.add_ray_flag(parser)
    flags.add_dry_run_flag(parser)
    flags.add_logging_flags(parser)
    args = parser.parse_args(argv)
    configure_logging(flags.log_level(args))
    try:
        labels = tuple(int(x) for x in args.labels.split(",") if x.strip())
        spec = SamplingSpec(args.checkpoint, args.preset, tuple(args.set), args.sampler, args.nfe, args.guidance_scale,
                            labels, args.batch_size, args.precision, args.compile)  # fmt: skip
        if args.dry_run:
            return flags.print_dry_run("sample", {**asdict(spec), "num": args.num, "output": args.output,
                                                  "seed_start": args.seed_start, "workers": args.workers,
                                                  "gpus_per_worker": args.gpus_per_worker})  # fmt: skip
        storage.check_writable(args.output)
        run(spec, args.num, args.output, args.seed_start, args.workers, args.gpus_per_worker, args.address)
    except (ConfigError, ResourceError, FileNotFoundError, ValueError) as error:
        return flags.report_error(f"{error}")
    except ClusterLostError as error:
        return flags.report_error(f"{error}", status=1)
    return 0
