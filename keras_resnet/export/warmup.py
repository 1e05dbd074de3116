"""TF Serving warm-up records (`assets.extra/tf_serving_warmup_requests`).

TF Serving replays these `PredictionLog` requests when it loads a version, so
the first real request does not pay for graph initialisation. Built with the
real protos from `tensorflow_serving.apis`.
"""

import numpy as np
import tensorflow as tf

WARMUP_FILE = "tf_serving_warmup_requests"   # under assets.extra/, replayed by TF Serving at load


def warmup_record(image_bytes, signature_name="serving_default", input_name="image_bytes"):
    """A serialized `tensorflow.serving.PredictionLog` holding one Predict request
    with `image_bytes` (a list of encoded images) as `input_name`."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature_name))
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.array(list(image_bytes), dtype=object)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString()


def write_warmup(path, image_size):
    """Writes one request: a mid-grey PNG at the model's size, which runs decode,
    the resize branch selection and the model once."""
    png = tf.io.encode_png(tf.fill(tuple(image_size) + (3,), tf.constant(128, tf.uint8))).numpy()
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(warmup_record([png]))
