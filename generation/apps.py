import os

from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Image generation"

    def ready(self):
        from django_q.signals import post_spawn

        post_spawn.connect(_register_gpu_worker, dispatch_uid="imagegen-register-gpu-worker")


def _register_gpu_worker(sender, proc_name, **kwargs):
    """A `gpu` cluster's worker registers as soon as it is spawned, before any job, then
    loads its default model and times it (`generation.worker.warm_up`)."""
    if os.environ.get("Q_CLUSTER_NAME") == "gpu":
        from generation import heartbeat, worker

        heartbeat.start()
        worker.warm_up()
