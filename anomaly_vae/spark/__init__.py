"""Batch scoring on Apache Spark: the job of ``anomaly-vae score`` over a Spark DataFrame, for data
that outgrows one machine. Needs the ``spark`` extra (``pyspark>=3.5``) and Java.

``score_dataframe`` maps the DataFrame's partitions through the same core as every other face
(``batch.score_chunk`` and ``batch.result_frame``) with ``mapInPandas``; ``score_images`` does the
same for a folder read by Spark's ``binaryFile`` source; ``spark_score`` is the whole job of
``anomaly-vae spark-score`` (read, score, write atomically, summarise); ``python -m anomaly_vae.spark``
and ``spark-submit .../anomaly_vae/spark/__main__.py`` run that command. Modules: ``frames``
(DataFrames in, DataFrames out), ``job`` (files in, files out), ``worker`` (the executor side),
``staging`` (the driver's copy of the model, and the copies killed drivers left).

Why ``mapInPandas`` and not ``predict_batch_udf``: a model's output here is a row of several columns
of mixed types (id, score, p-value, flag, threshold, error, explanations) computed from all of a
row's input columns at once, and a row that cannot be scored must keep its error; ``mapInPandas``
hands the function whole batches of whole rows and takes back a typed frame, with no tensor
conversion in between, which is exactly the shape of ``batch.score_chunk``.

The model travels as its directory (``model.json`` and ``model.safetensors``, never a pickled
detector): ``SparkContext.addFile`` ships a copy named after the sha256 of its card, and each
executor's Python worker loads it once (``load_detector`` checks the weights against the card),
after checking that the card it received has that sha256. The copy is checked on the driver first
(its card the one the job loaded, its weights the card's), and lives in a temporary folder removed
when the driver exits, or by the next job when the driver was killed (``staging``). Batches are regrouped by bytes on the
executor (``batch_bytes``), whatever Spark's Arrow batch size is.

Every input row gives exactly one output row with the columns of ``anomaly-vae score``. Without an
id column, ``row`` is the row's 0-based position: for ``spark_score`` (files) in the order of the
files' names and of the rows in each file, as ``anomaly-vae score`` numbers a single file; for
``score_dataframe`` in the DataFrame's own order (partition by partition), which, like
``RDD.zipWithIndex``, takes one counting pass and needs a DataFrame whose rows come out the same way
twice (any DataFrame read from files does; give ``id_column`` otherwise).
"""

from __future__ import annotations

from .frames import BATCH_BYTES, result_schema, score_dataframe, score_images, ship_model
from .job import read_table, session, spark_score
from .worker import CORRUPT_COLUMN

__all__ = ["score_dataframe", "score_images", "read_table", "spark_score", "session", "result_schema", "ship_model",
           "BATCH_BYTES", "CORRUPT_COLUMN"]
