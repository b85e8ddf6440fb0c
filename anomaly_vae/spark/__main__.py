"""``anomaly-vae spark-score`` as a script, for ``spark-submit`` (which runs a file, not a command):

    spark-submit --master yarn $(python -c "import anomaly_vae.spark.__main__ as m; print(m.__file__)") \\
        model/ hdfs:///events/2026-11-22/ --out hdfs:///scores/2026-11-22.parquet

Same flags, output and exit codes as the command; the master is the one ``spark-submit`` set."""

import sys

from anomaly_vae.cli import main

if __name__ == "__main__":
    sys.exit(main(["spark-score", *sys.argv[1:]]))
