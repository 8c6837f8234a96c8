"""Batch processing: one task per input object, each writing its output object back
(deployment ``batch-processing``).

Inputs and outputs are S3 prefixes (``s3://bucket/prefix``; the batch service signs the nodes'
URLs with its storage settings) or local directories the nodes can reach.

    python flows/batch_processing.py s3://bucket/inbox/ s3://bucket/outbox
"""

import sys

from prefect_batch.flows import batch_processing

if __name__ == "__main__":
    source, target = sys.argv[1], sys.argv[2]
    result = batch_processing(pool="local-pool", inputs=source, outputs=target)
    print(f"processed {len(result.tasks)} inputs into {target}")
