"""ganorch: distributed, stable GAN training on Ray Train and Tune, tracked in MLflow. `cli` is the entry point; the
subpackages are layered (pyproject.toml's import-linter contracts): cli > cluster | tune | generate > train >
evaluate > data | track > distributed | spec."""
