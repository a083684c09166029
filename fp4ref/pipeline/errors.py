"""The one exception the pipeline raises for a user's mistake (the CLI prints it as one line, exit 2)."""


class PipelineError(ValueError):
    """A bad model folder, data file, output folder or setting, found before any work is done."""
