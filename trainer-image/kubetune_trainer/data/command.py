"""Prepare a FineTuneJob's data: tokenised, masked, packed splits and a data report.

Writes the splits with `datasets.save_to_disk` (train, validation, test, and forgetting when
the job has a forgetting check), `chat_template.jinja` and `data-report.json` to --out.
Exit code 2 means the input is wrong (file, line and reason are on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kubetune.api import FineTuneJob
from kubetune.api.spec import FineTuneJobSpec
from kubetune_trainer.exitcodes import OK

from ..storage import use_credentials
from .errors import BadInputError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", required=True, type=Path, help="FineTuneJob YAML file")
    parser.add_argument(
        "--tokenizer", required=True, type=Path, help="directory with the base model's tokenizer"
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--num-proc",
        type=int,
        default=int(os.environ.get("KUBETUNE_DATA_PROC", "1")),
        help="worker processes for tokenising (env KUBETUNE_DATA_PROC)",
    )


def load_job_spec(path: Path) -> FineTuneJobSpec:
    """The spec of the FineTuneJob in `path`; BadInputError when it is not a valid job."""
    import yaml
    from pydantic import ValidationError

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        return FineTuneJob.model_validate(document).spec
    except OSError as err:
        raise BadInputError(f"cannot read the job: {err.strerror}", file=str(path)) from err
    except yaml.YAMLError as err:
        raise BadInputError(f"invalid YAML: {err}", file=str(path)) from err
    except ValidationError as err:
        raise BadInputError(f"invalid FineTuneJob: {err}", file=str(path)) from err


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        import datasets

        from .pipeline import prepare

        datasets.disable_progress_bars()
        spec = load_job_spec(args.job)
        use_credentials(spec.object_stores())
        prepare(spec, args.tokenizer, args.out, num_proc=args.num_proc)
    except BadInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return OK
