"""A CSV logger that survives resuming into the same run folder.

Lightning 2.6's CSV writer deletes an existing metrics.csv when it starts (`_check_log_dir_exists`),
so resuming a run into its own folder loses every row logged before the crash. This writer keeps
the file, seeds its column list from the existing header (so a header rewrite keeps old columns),
and appends.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))

    def _check_log_dir_exists(self) -> None:
        """Lightning removes metrics.csv here; we append to it instead."""


class ResumableCSVLogger(CSVLogger):
    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
