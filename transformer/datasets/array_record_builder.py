"""The base of the project's TFDS builders: array_record files, so no TensorFlow is needed."""

import tensorflow_datasets as tfds

# Written and read (`tfds.data_source`) without TensorFlow; TFDS' own default is tfrecord.
FILE_FORMAT = 'array_record'


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
  """A GeneratorBasedBuilder that writes array_record unless asked otherwise.

  So `tfds.data_source('bible_fr_en')` works on a machine without TensorFlow, where the
  default tfrecord writer fails ("No module named 'tensorflow'").
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)
