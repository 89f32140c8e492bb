"""The example task: a small image classifier, the framework's end-to-end test vehicle (`configs/quickstart.gin`)."""
