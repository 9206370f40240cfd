"""``python -m pql``: the same CLI as the ``pql`` script, for environments where it is not on PATH
(the MLproject entry points use it)."""

from pql.cli import app

app(prog_name="pql")
