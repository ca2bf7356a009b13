"""Layers: init's inferred shapes equal apply's, params are named and structured, errors name the layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purebp
from purebp import layers

KEY = jax.random.PRNGKey(0)

# (layer, input shapes it must handle)
LAYERS = {
    "Dense": (lambda: layers.Dense(7), [(4, 5), (2, 3, 5), (5,)]),
    "Conv-1d": (lambda: layers.Conv(6, (3,), stride=2), [(2, 9, 3), (1, 4, 2)]),
    "Conv-1d-from-stride": (lambda: layers.Conv(6, 3, stride=(2,)), [(2, 9, 3)]),
    "Conv-2d-valid-dilated": (lambda: layers.Conv(4, (3, 2), padding="VALID", dilation=(1, 2)), [(2, 7, 8, 3)]),
    "Conv-3d-groups": (lambda: layers.Conv(4, (2, 2, 2), groups=2, use_bias=False), [(1, 3, 4, 5, 2)]),
    "ConvTranspose-2d": (lambda: layers.ConvTranspose(5, 3, stride=2), [(2, 4, 5, 3), (1, 1, 1, 2)]),
    "ConvTranspose-1d-valid": (lambda: layers.ConvTranspose(2, (4,), stride=3, padding="VALID"), [(2, 5, 3)]),
    "MaxPool": (lambda: layers.MaxPool(2), [(2, 8, 8, 3), (1, 7, 5, 2)]),
    "MaxPool-overlap-same": (lambda: layers.MaxPool(3, stride=2, padding="SAME"), [(2, 7, 4, 3), (1, 5, 6, 2)]),
    "MaxPool-1d": (lambda: layers.MaxPool((3,), stride=2), [(2, 7, 3)]),
    "AvgPool": (lambda: layers.AvgPool((2, 1), padding=((1, 0), (0, 0)), count_include_pad=False), [(2, 5, 4, 3)]),
    "ZeroPad": (lambda: layers.ZeroPad(((1, 2), (0, 3))), [(2, 4, 5, 3)]),
    "Flatten": (lambda: layers.Flatten(), [(2, 3, 4, 5), (3, 2)]),
    "Sigmoid": (lambda: layers.Sigmoid(), [(2, 3)]),
    "Relu": (lambda: layers.Relu(), [(2, 3, 4)]),
    "Tanh": (lambda: layers.Tanh(), [(5,)]),
    "Gelu": (lambda: layers.Gelu(), [(2, 3)]),
    "Gelu-erf": (lambda: layers.Gelu(approximate=False), [(4,)]),
    "Silu": (lambda: layers.Silu(), [(2, 3, 4)]),
    "LayerNorm": (lambda: layers.LayerNorm(), [(2, 5), (2, 3, 4)]),
    "LayerNorm-two-axes": (lambda: layers.LayerNorm(axis=(1, 2), use_bias=False), [(2, 3, 4)]),
    "RMSNorm": (lambda: layers.RMSNorm(), [(3, 6)]),
    "Softmax": (lambda: layers.Softmax(), [(2, 3)]),
    "LogSoftmax": (lambda: layers.LogSoftmax(), [(2, 3)]),
    "MLP": (lambda: layers.MLP((6, 3), activation="tanh"), [(4, 5), (5,)]),
}


@pytest.mark.parametrize("name", LAYERS)
def test_init_shape_equals_apply_shape(name, rng):
    make, shapes = LAYERS[name]
    layer = make()
    for shape in shapes:
        output_shape, params = layer.init(KEY, shape)
        y = layer.apply(params, jnp.asarray(rng.standard_normal(shape), jnp.float32))
        assert output_shape == y.shape, shape


@pytest.mark.parametrize("name", LAYERS)
def test_params_are_named(name):
    make, shapes = LAYERS[name]
    _, params = make().init(KEY, shapes[0])
    if name == "MLP":
        assert [set(p) for p in params] == [{"w", "b"}] * 2
    elif name.startswith(("LayerNorm", "RMSNorm")):
        rows = shapes[0][1:] if "two-axes" in name else shapes[0][-1:]
        expected = {"scale": rows} if name != "LayerNorm" else {"scale": rows, "bias": rows}
        assert {k: v.shape for k, v in params.items()} == expected
        assert all(jnp.all(params[k] == (1 if k == "scale" else 0)) for k in params)  # flax's initialisers
    elif name.startswith(("Dense", "Conv")):
        assert set(params) == ({"w"} if "groups" in name else {"w", "b"})
    else:
        assert params == {}


def test_param_shapes_and_initialisers():
    _, params = layers.Conv(8, (3, 2), groups=2, w_init=jax.nn.initializers.ones,
                            b_init=jax.nn.initializers.constant(0.5)).init(KEY, (1, 6, 6, 4))
    assert params["w"].shape == (3, 2, 2, 8) and np.all(params["w"] == 1) and np.all(params["b"] == 0.5)
    _, params = layers.Dense(3).init(KEY, (100, 400))
    assert abs(float(params["w"].std()) - 1 / np.sqrt(400)) < 0.005  # LeCun normal: variance 1 / fan_in
    assert np.all(params["b"] == 0)


def test_serial_params_and_keys():
    model = layers.serial(layers.Dense(4), layers.Relu(), layers.Dense(4), layers.serial(layers.Dense(2)))
    output_shape, params = model.init(KEY, (3, 5))
    assert output_shape == (3, 2)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        [{"w": 0, "b": 0}, {}, {"w": 0, "b": 0}, [{"w": 0, "b": 0}]])
    assert not np.allclose(params[0]["w"][:4], params[2]["w"])  # one key per child
    _, again = model.init(KEY, (3, 5))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)  # deterministic


def test_serial_apply_composes(rng):
    model = layers.serial(layers.Dense(4), layers.Sigmoid(), layers.Dense(3))
    _, params = model.init(KEY, (2, 5))
    x = jnp.asarray(rng.standard_normal((2, 5)), jnp.float32)
    expected = purebp.dense(purebp.sigmoid(purebp.dense(x, params[0]["w"], params[0]["b"])), params[2]["w"],
                            params[2]["b"])
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)


def test_mlp_layer_equals_serial_dense_layers(rng):
    x = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    _, mlp_params = layers.MLP((4, 3)).init(KEY, x.shape)
    serial = layers.serial(layers.Dense(4), layers.Sigmoid(), layers.Dense(3))
    serial_params = [mlp_params[0], {}, mlp_params[1]]
    loss = lambda model, p: jnp.sum(model.apply(p, x) ** 2)
    np.testing.assert_allclose(loss(layers.MLP((4, 3)), mlp_params), loss(serial, serial_params), rtol=1e-6)
    mlp_grads = jax.grad(lambda p: loss(layers.MLP((4, 3)), p))(mlp_params)
    serial_grads = jax.grad(lambda p: loss(serial, p))(serial_params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                           mlp_grads, [serial_grads[0], serial_grads[2]])


@pytest.mark.parametrize("layer, shape, error, match", [
    pytest.param(layers.Conv(4, 3), (5, 3), ValueError, r"Conv\(4, 3\) cannot take input_shape \(5, 3\): "
                 r"Conv\(4, 3\) takes 2-D inputs \(N, H, W, C\)", id="conv-rank"),
    pytest.param(layers.Conv(4, 3, groups=2), (2, 5, 5, 3), ValueError, r"Conv\(4, 3\) cannot take .*divisible by "
                 r"`groups`", id="conv-groups"),
    pytest.param(layers.Conv(4, 5, padding="VALID"), (2, 3, 3, 1), ValueError, r"larger than the padded input",
                 id="kernel-too-big"),
    pytest.param(layers.MaxPool(4), (2, 3, 3, 1), ValueError, r"MaxPool\(4\) cannot take", id="window-too-big"),
    pytest.param(layers.Dense(3), (), ValueError, r"Dense\(3\) cannot take input_shape \(\)", id="dense-scalar"),
    pytest.param(layers.Dense(3), (2, "5"), TypeError, r"Dense\(3\): `input_shape` must be a tuple of non-negative "
                 r"ints", id="bad-shape"),
    pytest.param(layers.Conv(4, (3, 3, 3)), (2, 5, 5, 1), ValueError, r"takes 3-D inputs \(N, D, H, W, C\), got "
                 r"`x` of shape \(2, 5, 5, 1\); give the layer a tuple of 2 kernel/window sizes", id="kernel-size"),
])
def test_bad_input_shape_names_the_layer(layer, shape, error, match):
    with pytest.raises(error, match=match):
        layer.init(KEY, shape)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="`features` must be a positive int, got 0"):
        layers.Dense(0)
    with pytest.raises(ValueError, match=r"`sizes` must list at least one layer width"):
        layers.MLP(())
    with pytest.raises(TypeError, match="serial takes one or more Layers"):
        layers.serial(purebp.relu)


def test_serial_apply_checks_its_params_list(rng):
    """A list of the wrong length no longer skips layers, nor swapped params give a bare KeyError."""
    model = layers.serial(layers.Dense(3), layers.Relu(), layers.Dense(2))
    _, params = model.init(KEY, (4, 5))
    x = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
    with pytest.raises(ValueError, match=r"serial of 3 layers needs a list of 3 params, one per layer, got a list of 2"):
        model.apply(params[:2], x)
    with pytest.raises(ValueError, match=r"serial of 3 layers needs a list of 3 params, .* got a dict with keys \['b', 'w'\]"):
        model.apply(params[0], x)
    with pytest.raises(ValueError, match=r"serial layer 0: Dense\(3\) needs params with the key 'w', got a dict with "
                                         r"keys \[\]: are these another layer's params\?"):
        model.apply([params[1], params[0], params[2]], x)


def test_apply_errors_name_the_layer_and_the_shape(rng):
    model = layers.serial(layers.Flatten(), layers.Dense(3))
    _, params = model.init(KEY, (2, 4, 5))
    with pytest.raises(ValueError, match=r"serial layer 1: Dense\(3\) cannot take `x` of shape \(2, 6\): `x` must "
                                         r"have shape \[\.\.\., in\] with in = 20"):
        model.apply(params, jnp.ones((2, 2, 3)))


def test_init_takes_numpy_shapes_and_names_the_habits_it_refuses():
    """NumPy integers are ints; the data itself, a bad key and an int for MLP's sizes get plain messages."""
    assert layers.Dense(3).init(KEY, (np.int64(4), np.int32(5)))[0] == (4, 3)
    assert layers.MLP((np.int64(6), 2)).init(jax.random.key(0), (4, 5))[0] == (4, 2)
    data = np.zeros((1797, 8, 8, 1))
    with pytest.raises(TypeError, match=r"got an array of shape \(1797, 8, 8, 1\); pass its `.shape`") as raised:
        layers.serial(layers.Flatten(), layers.Dense(3)).init(KEY, data)
    assert len(str(raised.value)) < 200  # the array's values stay out of the message
    with pytest.raises(TypeError, match=r"serial: `key` must be a PRNG key, .* got int"):
        layers.serial(layers.Dense(3)).init(0, (4, 5))
    with pytest.raises(TypeError, match=r"Dense\(3\): `key` must be a PRNG key, .* of shape \(3,\) and dtype uint32"):
        layers.Dense(3).init(jnp.zeros(3, jnp.uint32), (4, 5))
    with pytest.raises(TypeError, match=r"MLP: `sizes` must be a sequence of the layers' widths .* got 10"):
        layers.MLP(10)


@pytest.mark.parametrize("layer, good, bad, layout", [
    pytest.param(layers.Conv(8, 3), (2, 8, 8, 1), (1797, 8, 8),
                 r"2-D inputs \(N, H, W, C\), got `x` of shape \(1797, 8, 8\)", id="conv-images-without-channels"),
    pytest.param(layers.Conv(8, (3,)), (2, 8, 1), (2, 8, 8, 1), r"1-D inputs \(N, W, C\)", id="conv-1d-given-2d"),
    pytest.param(layers.MaxPool(2), (2, 8, 8, 3), (2, 8, 3), r"2-D inputs \(N, H, W, C\)", id="maxpool"),
    pytest.param(layers.AvgPool((2, 2, 2)), (2, 4, 4, 4, 3), (2, 8, 8, 3), r"3-D inputs \(N, D, H, W, C\)",
                 id="avgpool-3d"),
    pytest.param(layers.ZeroPad(1), (2, 8, 8, 3), (2, 8, 3), r"2-D inputs", id="zeropad"),
    pytest.param(layers.ConvTranspose(4, 3), (2, 8, 8, 3), (8, 8, 3), r"2-D inputs", id="conv-transpose-no-batch"),
])
def test_a_spatial_layer_fixes_its_rank(layer, good, bad, layout):
    """The rank comes from the constructor, never the input: digits.images without [..., None] no longer
    builds a 1-D convolution, nor does init without the batch dim; apply refuses it too."""
    with pytest.raises(ValueError, match=layout):
        layer.init(KEY, bad)
    _, params = layer.init(KEY, good)
    if params:  # the kernel's channels must fit, so the rank is what is refused
        bad = bad[:-1] + good[-1:]
    with pytest.raises(ValueError, match=layout.split(", got")[0]):
        layer.apply(params, jnp.ones(bad))


def test_params_are_float32_unless_asked_even_under_x64(x64):
    """A model initialised with x64 on takes the float32 data its docs feed it; param_dtype asks for another."""
    model = layers.serial(layers.Conv(4, 3, w_init=jax.nn.initializers.he_normal()), layers.Relu(), layers.Flatten(),
                          layers.Dense(3), layers.MLP((5, 2)))
    _, params = model.init(KEY, (2, 6, 6, 1))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    assert model.apply(params, jnp.ones((2, 6, 6, 1), jnp.float32)).dtype == jnp.float32
    wide = layers.serial(layers.Conv(4, 3, param_dtype=jnp.float64), layers.Flatten(), layers.Dense(3, param_dtype=jnp.float64))
    _, params = wide.init(KEY, (2, 6, 6, 1))
    assert wide.apply(params, jnp.ones((2, 6, 6, 1), jnp.float64)).dtype == jnp.float64
    with pytest.raises(TypeError, match=r"serial layer 0: Conv\(4, 3\) cannot take `x` of shape \(2, 6, 6, 1\): `w` "
                                        r"must have the dtype of `x` \(float32\), got float64"):
        wide.apply(params, jnp.ones((2, 6, 6, 1), jnp.float32))
    with pytest.raises(TypeError, match="`param_dtype` must be a floating-point dtype, got <class 'jax.numpy.int32'>"):
        layers.Dense(3, param_dtype=jnp.int32)


def test_embed_looks_up_integer_ids_with_flax_params():
    import flax.linen as nn

    layer = layers.Embed(11, 4)
    output_shape, params = layer.init(KEY, (2, 5))
    ids = jnp.arange(10).reshape(2, 5)
    assert output_shape == (2, 5, 4) and params["embedding"].shape == (11, 4)
    np.testing.assert_array_equal(layer.apply(params, ids), nn.Embed(11, 4).apply({"params": params}, ids))
    model = layers.serial(layers.Embed(11, 4), layers.Flatten(), layers.Dense(3))
    assert model.init(KEY, (2, 5))[0] == (2, 3)
    with pytest.raises(TypeError, match=r"Embed\(11, 4\) cannot take `x` of shape \(2,\): `ids` must have an integer"):
        layer.apply(params, jnp.ones(2))


# --- randomness and state ------------------------------------------------------------------------


def bn_dropout_model():
    return layers.serial(layers.Dense(6), layers.BatchNorm(momentum=0.9), layers.Relu(), layers.Dropout(0.5),
                         layers.Dense(3))


def test_dropout_layer_draws_with_its_key_in_training_and_is_the_identity_in_evaluation(rng):
    layer = layers.Dropout(0.25)
    output_shape, params = layer.init(KEY, (4, 8))
    x = jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
    key = jax.random.key(3)
    assert output_shape == (4, 8) and params == {} and layer.takes == {"key", "train"} and layer.init_state is None
    np.testing.assert_array_equal(layer.apply(params, x, key=key, train=True), purebp.dropout(x, key, 0.25))
    np.testing.assert_array_equal(layer.apply(params, x, train=False), x)


def test_batch_norm_layer_has_flax_names_and_values(rng):
    import flax.linen as nn

    layer = layers.BatchNorm(momentum=0.9)
    x = jnp.asarray(3 * rng.standard_normal((8, 4, 4, 5)) + 1, jnp.float32)
    output_shape, params = layer.init(KEY, x.shape)
    state = layer.init_state(x.shape)
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
    variables = flax_bn.init(KEY, x)
    assert output_shape == x.shape and layer.takes == {"train", "state"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, (params, state), (variables["params"], variables["batch_stats"]))
    y, new_state = layer.apply(params, x, state=state, train=True)
    flax_y, updates = flax_bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, flax_y, rtol=2e-6, atol=2e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new_state, updates["batch_stats"])
    y, same = layer.apply(params, x, state=new_state, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, new_state)


def test_serial_threads_each_child_its_key_mode_and_state(rng):
    model = bn_dropout_model()
    output_shape, params = model.init(KEY, (2, 4))
    state = model.init_state((2, 4))
    x = jnp.asarray(rng.standard_normal((10, 4)), jnp.float32)
    key = jax.random.key(7)
    assert output_shape == (2, 3) and model.takes == {"key", "train", "state"}
    assert [set(s) for s in state] == [set(), {"mean", "var"}, set(), set(), set()]
    y, new_state = model.apply(params, x, state=state, key=key, train=True)
    # by hand: each child with its own key of serial's split (stax's rng), and its own state
    h = purebp.dense(x, params[0]["w"], params[0]["b"])
    h, stats = purebp.batch_norm(h, params[1]["scale"], params[1]["bias"], state[1], train=True, momentum=0.9)
    h = purebp.dropout(purebp.relu(h), jax.random.split(key, 5)[3], 0.5)
    np.testing.assert_allclose(y, purebp.dense(h, params[4]["w"], params[4]["b"]), rtol=1e-6)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state[1], stats)
    evaluation, unchanged = model.apply(params, x, state=new_state, train=False)
    np.testing.assert_array_equal(evaluation, model.apply(params, x, state=new_state, train=False, key=key)[0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, unchanged, new_state)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, x, state=state, key=key, train=True)[0] ** 2))(params)
    assert set(grads[1]) == {"scale", "bias"}  # the statistics are state, never params


def test_models_without_randomness_or_state_keep_the_two_argument_protocol(rng):
    """A hand-written Layer(init, apply) of two arguments still composes; a serial without state returns y."""
    double = layers.Layer(lambda key, shape: (shape, {}), lambda params, x: 2 * x)
    model = layers.serial(layers.Dense(3), double, layers.Dropout(0.5))
    _, params = model.init(KEY, (2, 4))
    x = jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)
    assert model.init_state is None and model.takes == {"key", "train"}
    np.testing.assert_array_equal(model.apply(params, x, train=False), 2 * purebp.dense(x, params[0]["w"], params[0]["b"]))
    plain = layers.serial(layers.Dense(3), double)
    np.testing.assert_array_equal(plain.apply(params[:2], x), plain.apply(params[:2], x, train=True, key=KEY))


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda m, p, s, x: m.apply(p, x, state=s), r"serial acts differently in training and in evaluation: "
                 r"pass `train=True` with a `key` or `train=False`, got None", id="no-mode"),
    pytest.param(lambda m, p, s, x: m.apply(p, x, state=s, train=True), r"serial draws random numbers in training: "
                 r"pass `key=` with `train=True`", id="no-key"),
    pytest.param(lambda m, p, s, x: m.apply(p, x, train=False), "serial has state: pass `state=`", id="no-state"),
    pytest.param(lambda m, p, s, x: layers.Dense(3).apply(p[0], x, train=True),
                 r"Dense\(3\)\.apply got the keyword argument\(s\) 'train' but takes none", id="unknown"),
    pytest.param(lambda m, p, s, x: layers.BatchNorm().apply(p[1], x, state=s[1], train="yes"),
                 r"BatchNorm\(momentum=0.99\) acts differently .* got 'yes'", id="mode-not-bool"),
    pytest.param(lambda m, p, s, x: m.apply(p, x, state=s[:2], train=False),
                 r"serial of 5 layers needs `state` as a list of 5", id="state-list"),
])
def test_randomness_and_state_errors_say_what_to_pass(call, match, rng):
    model = bn_dropout_model()
    _, params = model.init(KEY, (2, 4))
    with pytest.raises((TypeError, ValueError), match=match):
        call(model, params, model.init_state((2, 4)), jnp.ones((2, 4)))


# --- attention and transformer blocks ------------------------------------------------------------


def test_multi_head_attention_is_the_dense_projections_around_dot_product_attention(rng):
    layer = layers.MultiHeadAttention(2, qkv_features=8, out_features=5, is_causal=True)
    x = jnp.asarray(rng.standard_normal((3, 6, 4)), jnp.float32)
    output_shape, params = layer.init(KEY, x.shape)
    assert output_shape == (3, 6, 5)
    assert {k: v["w"].shape for k, v in params.items()} == {"query": (4, 8), "key": (4, 8), "value": (4, 8),
                                                            "out": (8, 5)}
    heads = lambda name: purebp.dense(x, params[name]["w"], params[name]["b"]).reshape(3, 6, 2, 4)
    o = jax.nn.dot_product_attention(heads("query"), heads("key"), heads("value"), is_causal=True)
    np.testing.assert_allclose(layer.apply(params, x), purebp.dense(o.reshape(3, 6, 8), params["out"]["w"],
                                                                     params["out"]["b"]), rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match=r"`qkv_features` \(6\) must be a multiple of `num_heads` \(4\)"):
        layers.MultiHeadAttention(4, qkv_features=6).init(KEY, x.shape)


def test_transformer_block_is_two_pre_norm_residuals(rng):
    block = layers.TransformerBlock(4, 2, mlp_features=8)
    x = jnp.asarray(rng.standard_normal((2, 5, 4)), jnp.float32)
    output_shape, (attention, mlp) = block.init(KEY, x.shape)
    assert output_shape == x.shape and [len(attention), len(mlp)] == [2, 4]
    h = x + layers.MultiHeadAttention(2).apply(attention[1], purebp.layer_norm(x, **attention[0]))
    up, down = mlp[1], mlp[3]
    want = h + purebp.dense(purebp.gelu(purebp.dense(purebp.layer_norm(h, **mlp[0]), up["w"], up["b"])), down["w"],
                            down["b"])
    np.testing.assert_allclose(block.apply([attention, mlp], x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"Residual adds its layers' output to their input: they must keep its shape"):
        layers.Residual(layers.Dense(3)).init(KEY, (2, 4))


def test_positional_embedding_adds_a_row_per_position(rng):
    layer = layers.PositionalEmbedding(10)
    x = jnp.asarray(rng.standard_normal((2, 6, 3)), jnp.float32)
    _, params = layer.init(KEY, x.shape)
    np.testing.assert_array_equal(layer.apply(params, x), x + params["embedding"][:6])
    grad = jax.grad(lambda p: jnp.sum(layer.apply(p, x)))(params)["embedding"]
    np.testing.assert_array_equal(grad, jnp.zeros((10, 3)).at[:6].set(2.0))  # two examples, unused rows untouched
    with pytest.raises(ValueError, match=r"the sequence's length 11 exceeds `max_length` \(10\)"):
        layer.init(KEY, (2, 11, 3))
