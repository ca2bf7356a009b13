"""test_transforms' fresh process: which programs an eager VJP of each op of the table compiles.

Run by ``test_an_eager_vjp_compiles_one_program_each_way``, not by pytest itself:
``python tests/eager_compiles.py`` prints ``{op name: [program, ...]}`` as JSON, the programs in
the order they compiled, for ``jax.vjp`` of the op on its float32 example followed by a call of
the function it returns. A compile is logged only where no earlier call compiled that program, so
the count needs a process of its own: in the test run itself ``jax.clear_caches()`` would make
every later test recompile the programs it shares with the others.
"""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np

from op_examples import EXAMPLES, cast, draw, of_floats, op


class CompiledPrograms(logging.Handler):
    """Collects the program names of JAX's "Compiling jit(name) ..." log lines."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.names.append(message.split(" ")[1])


def compiled_by_an_eager_vjp(name):
    args = cast(draw(name), jnp.float32)
    cotangent = jax.tree_util.tree_map(lambda s: jnp.asarray(np.ones(s.shape), s.dtype), jax.eval_shape(op(name), *args))
    function, floats = of_floats(op(name), args)
    handler = CompiledPrograms()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            _, vjp_fn = jax.vjp(function, *floats)
            jax.block_until_ready(vjp_fn(cotangent))
    finally:
        logger.removeHandler(handler)
    return handler.names


if __name__ == "__main__":
    print(json.dumps({name: compiled_by_an_eager_vjp(name) for name in EXAMPLES}))
