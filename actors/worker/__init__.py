"""The worker actor: pulls tasks, streams their data, runs their handlers, stores results.

:class:`~batchfarm.actors.worker.core.WorkerCore` is the engine (threads around one running
handler); :class:`~batchfarm.actors.worker.actor.WorkerActor` puts it in a process with a
mailbox. The worker talks to the manager only through the queues and the blob store.
"""
