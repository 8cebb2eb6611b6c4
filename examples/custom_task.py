"""The design document's "Custom Task Types" example, in a program of its own: the
library, no server. Run it from the repository root."""

import anyio

from vpsweb_tasks import TaskDefinition, TaskPriority, get_task_manager


async def create_custom_task():
    task_manager = get_task_manager()

    task_def = TaskDefinition(
        name="Custom Data Processing",
        task_type="custom_processing",
        priority=TaskPriority.HIGH,
        max_retries=3,
        timeout_seconds=600,
        metadata={"input_source": "external_api", "output_destination": "database"},
    )

    async def custom_task_function(context):
        # Your custom logic here
        await context.update_progress(0.1, "Starting processing")
        # ... processing steps ...
        await context.update_progress(1.0, "Processing complete")
        return {"status": "success", "records_processed": 100}

    context = task_manager.create_task(task_def, custom_task_function)
    return context.task_id


async def main():
    async with get_task_manager() as manager:
        task_id = await create_custom_task()
        record = await manager.wait(task_id)
        print(f"{record.name}: {record.status} -> {record.result}")


anyio.run(main)
