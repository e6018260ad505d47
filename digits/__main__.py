"""``python -m digits``: the CLI, as torchrun's workers run it (``digits train --nproc``)."""

from digits.cli import app

app(prog_name="digits")
