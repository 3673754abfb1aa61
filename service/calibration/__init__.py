"""Pure code shared by the service and the training job: the confidence query template and math,
the calibration metrics, and the graded record. Nothing here imports the rest of the service."""
