"""Outbound notifications: subscriptions, the outbox dispatcher, delivery records.

A *subscription* names what to watch (one pipeline's jobs, or one job; optionally only some
target states and/or event names) and whom to tell, through a *sink* (``pipelinejobs.sinks``:
a signed webhook, an Abaco/Tapis actor, an OpenLineage endpoint).

The event path (``service.apply_event``) asks :mod:`.matching` which subscriptions an event
concerns (a cached list: nothing is read per event) and the store writes their ids with the
event's log record, in the same atomic step: the *outbox*. The dispatcher (:mod:`.dispatcher`,
a thread in `pipelinejobs serve`, or `pipelinejobs notify --drain`) leases due items and has
each sink deliver them at least once, with capped exponential backoff and full jitter.

One module per concern, imported from its path (this file imports nothing, so the event path
loads only :mod:`.matching`, :mod:`.wake` and :mod:`.budget`):

- :mod:`.budget` the ``notifications`` settings: how hard the dispatcher tries;
- :mod:`.matching` the subscription list as the event path reads it, and matching;
- :mod:`.wake` telling the dispatcher that an outbox item was just committed;
- :mod:`.subscriptions` making, checking, saving, showing and removing subscriptions;
- :mod:`.signing` Standard Webhooks secrets and signatures;
- :mod:`.notification` what a webhook or an actor is told, and its id;
- :mod:`.deliveries` delivery records and pass reports;
- :mod:`.dispatcher` the outbox's claim, fates and settlement; test sends; serve's thread.
"""
