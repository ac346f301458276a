"""``optgraph export``: the inference model of an artifact or checkpoint, with its weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from optgraph.cli.errors import UsageError

HELP = "write the eval-mode inference model of an artifact or checkpoint, with its trained weights"


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("export", parents=[common], help=HELP, description=HELP)
    p.add_argument("artifact", metavar="DIR", help="an artifact or a checkpoint (optgraph train's OUT/checkpoint)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the .onnx file to write (replaced if it exists)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from optgraph.session import CPU, TrainingSession

    source, target = Path(args.artifact), Path(args.out)
    if target.is_dir():
        raise UsageError(f"{target} is a directory; -o takes the .onnx file to write")
    session = TrainingSession(source, providers=[CPU])
    written = session.export_inference(target)
    inputs, outputs = _signature(written)
    print(f"exported {source} -> {written} (inputs {inputs}; outputs {outputs})")
    return 0


def _signature(path: Path) -> tuple[str, str]:
    """The model's inputs and outputs as ``name dtype[dims]`` lists."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(value) -> str:
        tensor = value.type.tensor_type
        dims = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.shape.dim)
        return f"{value.name} {onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)}[{dims}]"

    return ", ".join(map(describe, graph.input)), ", ".join(map(describe, graph.output))
