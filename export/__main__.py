"""`python -m export` / `transxnet-export`: export TransXNet to a verified single-file ONNX model."""

from __future__ import annotations

import argparse
import logging
import sys

from export.download import CheckpointDownloadError
from export.onnx_export import DEFAULT_OPSET, DEFAULT_SEED, ExportError
from export.verify import VerificationError
from model import CheckpointError

#: Exit codes a script can act on (scripts/serve.sh falls back to random weights only on 4).
EXIT_USAGE_OR_INPUT = 2
EXIT_VERIFICATION_FAILED = 3
EXIT_DOWNLOAD_FAILED = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export TransXNet to one ONNX file (dynamic batch, metadata for the service), "
        "then verify it against PyTorch with ONNX Runtime.",
    )
    p.add_argument("--variant", default="t", help="t | s | b (or transxnet_t ...); default t")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="PATH, http(s) URL, or 'pretrained' (the official ImageNet release for the variant and "
        "size). Omitted: a seeded random initialisation, recorded as such in the file.",
    )
    p.add_argument("--image-size", type=int, default=224, help="input side; 384 for the B-384 release")
    p.add_argument("--output", default=None, help="ONNX file to write (default models/<variant>[_size].onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--fp16", action="store_true", help="float16 weights/activations for GPU providers")
    p.add_argument("--labels", default=None, help="class names, one per line (default ImageNet-1k)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the random initialisation")
    p.add_argument("--triton-repo", default=None, help="also write a Triton model repository here")
    p.add_argument("--max-batch-size", type=int, default=16, help="Triton max batch / TensorRT profile")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    p.add_argument("--expect", default=None, help=".npz with `inputs` and reference outputs to match too")
    p.add_argument("--cache-dir", default=None, help="download cache (default $TRANSXNET_CACHE_DIR)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our progress at INFO; third-party chatter (the onnxscript optimiser logs every rewrite) at WARNING.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for name in ("export", "model", "runtime"):
        logging.getLogger(name).setLevel(logging.WARNING if args.quiet else logging.INFO)
    # Imported here so `--help` answers without loading torch.
    from export.pipeline import export_model

    try:
        result = export_model(
            args.variant,
            checkpoint=args.checkpoint,
            image_size=args.image_size,
            output=args.output,
            opset=args.opset,
            fp16=args.fp16,
            labels_file=args.labels,
            num_classes=args.num_classes,
            seed=args.seed,
            verify=not args.no_verify,
            expected=args.expect,
            triton_repo=args.triton_repo,
            max_batch_size=args.max_batch_size,
            cache_dir=args.cache_dir,
        )
    except VerificationError as exc:
        logging.error("%s\n%s", exc, exc.report.table())
        return EXIT_VERIFICATION_FAILED
    except CheckpointDownloadError as exc:
        logging.error("%s", exc)
        return EXIT_DOWNLOAD_FAILED
    except (FileNotFoundError, ValueError, CheckpointError, ExportError) as exc:
        logging.error("%s", exc)
        return EXIT_USAGE_OR_INPUT
    total = sum(result.timings.values())
    print(f"wrote {result.path} ({result.metadata.variant}, {result.metadata.weights}) in {total:.0f} s")
    if result.triton_model_dir is not None:
        print(f"wrote Triton model repository {result.triton_model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
