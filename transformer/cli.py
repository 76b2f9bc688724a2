"""What the entry scripts share: quiet library logs."""

import logging as std_logging

from absl import logging


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's INFO lines (a dozen per checkpoint save) so the run's own log is readable."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Keeps warnings and errors of every library, and the INFO lines of everything but orbax."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
