from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"

    def ready(self) -> None:
        from registry import signals
        from tasks import receivers

        signals.agent_registered.connect(
            receivers.add_to_continuous_jobs, dispatch_uid="tasks.receivers.add_to_continuous_jobs"
        )
        signals.agent_removing.connect(
            receivers.release_tasks_of_removed_agent, dispatch_uid="tasks.receivers.release_tasks_of_removed_agent"
        )
