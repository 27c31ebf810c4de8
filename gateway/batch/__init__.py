"""The batch lane: OpenAI's Files and Batch APIs, with the lines of each batch run on the
self-hosted pools' idle capacity, as the lowest priority, through the same pipeline as
interactive traffic (admission, routing, failover, metering).

    api.py        the HTTP endpoints: /v1/files, /v1/batches
    files.py      file records (the store) and contents (blobs.py: local disk or S3)
    upload.py     multipart uploads, streamed to the blob store under a size cap
    batches.py    batch records and their OpenAI JSON
    lines.py      input lines: validated, turned into requests; output and error lines
    headroom.py   how many lines a pool can take now without hurting interactive SLOs
    lane.py       the scheduler: leases lines, dispatches them, writes their results
    pace.py       the lane's limit per pool: halves under pressure, regrows a line a tick
    finish.py     validation before a batch runs, its files once it ends
    lane_pipeline.py  the lane's pipeline: the interactive one's stages, a discount
    system.py     composition: what `services.py` starts

Kept free of imports here: `gateway.config` imports `settings.py`.
"""
