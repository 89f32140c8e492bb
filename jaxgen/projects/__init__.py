"""One package per paper: Linen modules (`model.py`), a Task (`task.py`), and a forked trainer only when needed."""
