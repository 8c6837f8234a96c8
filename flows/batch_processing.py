"""Batch processing: one task per input file, each writing its output (deployment
``batch-processing``).

Inputs and outputs are local directories the nodes can reach until S3 staging lands; then
the deployment's parameters become S3 prefixes (resource files in, output files out).
"""

import sys

from prefect_batch.flows import batch_processing

if __name__ == "__main__":
    source, target = sys.argv[1], sys.argv[2]
    result = batch_processing(pool="local-pool", input_dir=source, output_dir=target)
    print(f"processed {len(result.tasks)} files into {target}")
