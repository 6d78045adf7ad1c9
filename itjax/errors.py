"""The one error type for user mistakes; the CLI prints it as one line."""


class UserError(Exception):
  """A user mistake (config, data, checkpoint, task name); the CLI prints it as one line."""
