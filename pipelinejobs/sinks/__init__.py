"""Notification sinks: where a subscription's notifications go, one module per kind.

A sink (:class:`.base.Sink`) declares its subscription kind (the document's ``target``), the
request field that chooses it, how its fields are checked and which of them are secrets, and how
one delivery is made and judged (delivered, retry, give up, refused, skipped). :mod:`.registry`
lists them: adding a sink is one module and one line there.

- :mod:`.webhook` an HTTP POST signed the Standard Webhooks way, with CloudEvents headers;
- :mod:`.actor` a message to an Abaco/Tapis actor, with its nonce or token;
- :mod:`.openlineage` an OpenLineage RunEvent per state change (Marquez and friends);
- :mod:`.http` the pooled HTTP client they send with: the outbound policy, proxies, a deadline.

Nothing here is imported on the event path: the dispatcher and the subscription commands load it.
"""
