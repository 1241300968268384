"""The language stack: MRPC data, the pretrained encoder, training, tasks.

``data`` loads MRPC (``$GLUE_DIR``, the datasets hub, or a generated
offline set); ``models`` loads the pretrained encoder and plugs the
package's attention into it; ``training`` fine-tunes, caches and scores
models; ``encoder`` is a small Transformer encoder layer that takes any
attention function; ``tasks`` holds the synthetic tasks it is trained on,
``long_range`` the tasks of a small Long Range Arena.
Imported on first use (``data``, ``models`` and ``training`` import
transformers): ``ea.training``, ``ea.models``.
"""
