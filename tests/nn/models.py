"""Models and native predictions for the wasi-nn tests and benchmark (tests/nn/setup-ort.sh's
venv: onnx, onnxruntime, numpy).

  models.py classifier OUT FEATURES CLASSES SEED   # x[N,F] -> probs[N,C] = softmax(xW+b)
  models.py mlp OUT FEATURES WIDTH LAYERS CLASSES SEED  # x[N,F] -> probs[N,C]: LAYERS
      WIDTH-wide layers relu(xW+b), then softmax(xW+b) (the benchmark's realistic model)
  models.py big OUT MIB                            # a model with a MIB-sized weight
  models.py wide OUT FEATURES WIDTH                # x[N,F] -> y[N,WIDTH] (large outputs)
  models.py deep OUT FEATURES LAYERS               # x[N,F] -> y[N,F], LAYERS times tanh(xW)
      with one F x F weight (a long inference from a small model)
  models.py nested OUT DEPTH                       # x[4], c -> y: DEPTH nested If
      subgraphs (ONNX Runtime's parser takes about 32; a hostile model nests deeper)
  models.py external OUT LOCATION [FORM]           # x[4] + w, w's 16 bytes read from the
      file LOCATION ("external data"): the host must refuse it. FORM: `dense` (the
      default) or `sparse` (w a sparse initializer whose values are the external data);
      LOCATION `address:N` names ONNX Runtime's in-memory marker `*/_ORT_MEM_ADDR_/*` with
      offset N, read as a pointer. ONNX Runtime before 1.27 reads some of these
  models.py records OUT N FEATURES SEED            # N lines of F comma-separated numbers
  models.py native MODEL RECORDS BATCH OUT [THREADS] # ONNX Runtime on the records in batches:
      OUT gets one line per record, "LABEL,BITS0,BITS1,..." (the f32 scores' bit patterns)
  models.py bench-batch MODEL BATCH FEATURES REPEAT # seconds of REPEAT runs of one batch
      (element i = i/8, as nn_probe makes it), printed
"""
import sys

import numpy as np


def classifier(out, features, classes, seed):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    save(helper, graph, out)


def mlp(out, features, width, layers, classes, seed):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, prev, fan_in = [], [], "x", features
    for i in range(layers + 1):
        last = i == layers
        fan_out = classes if last else width
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]))
        if last:
            nodes.append(helper.make_node("Softmax", [f"a{i}"], ["probs"], axis=1))
        else:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
        prev, fan_in = f"h{i}", fan_out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", classes])],
        weights,
    )
    save(helper, graph, out)


def wide(out, features, width):
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((features, width), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        [numpy_helper.from_array(w, "w")],
    )
    save(helper, graph, out)


def deep(out, features, layers):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((features, features)) / np.sqrt(features)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(layers):
        last = "y" if i == layers - 1 else f"t{i}"
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [last]))
        prev = last
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", features])],
        [numpy_helper.from_array(w, "w")],
    )
    save(helper, graph, out)


def big(out, mib):
    # x[N,1] + a constant of MIB MiB folded into a ReduceSum: the weight makes the file big.
    from onnx import TensorProto, helper, numpy_helper

    n = mib * (1 << 20) // 4
    w = np.full((1, n), 0.5, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n])],
        [numpy_helper.from_array(w, "w")],
    )
    save(helper, graph, out)


def nested(out, depth):
    # Encoded by hand: onnx's Python classes refuse messages nested past protobuf's depth
    # limit, and the point is a model nested past ONNX Runtime's.
    from onnx import TensorProto, helper

    def varint(n):
        b = bytearray()
        while True:
            b.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(b)

    def field(num, payload):  # a length-delimited field
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    def graph_attr(name, graph):  # AttributeProto: name, g, type = GRAPH (5)
        return field(1, name) + field(6, graph) + varint(20 << 3) + varint(5)

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]).SerializeToString()
    identity = helper.make_node("Identity", ["x"], ["y"]).SerializeToString()
    leaf = field(1, identity) + field(2, b"leaf") + field(12, y)  # GraphProto
    g = leaf
    for i in range(depth):
        node = (
            field(1, b"c") + field(2, b"y") + field(4, b"If")
            + field(5, graph_attr(b"then_branch", g))
            + field(5, graph_attr(b"else_branch", leaf))
        )
        g = field(1, node) + field(2, b"g%d" % i) + field(12, y)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]).SerializeToString()
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, []).SerializeToString()
    opset = helper.make_opsetid("", 17).SerializeToString()
    # ModelProto: ir_version 8, graph, opset_import.
    model = varint(1 << 3) + varint(8) + field(7, g + field(11, x) + field(11, c)) + field(8, opset)
    with open(out, "wb") as f:
        f.write(model)


def external(out, location, form="dense"):
    from onnx import SparseTensorProto, TensorProto, helper

    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([4])
    w.data_location = TensorProto.EXTERNAL
    if location.startswith("address:"):
        entries = [("location", "*/_ORT_MEM_ADDR_/*"), ("offset", location[len("address:"):])]
    else:
        entries = [("location", location)]
    for key, value in entries + [("length", "16")]:
        entry = w.external_data.add()
        entry.key = key
        entry.value = value
    initializers, sparse = [w], []
    if form == "sparse":
        indices = helper.make_tensor("w_indices", TensorProto.INT64, [4], [0, 1, 2, 3])
        s = SparseTensorProto()
        s.values.CopyFrom(w)
        s.indices.CopyFrom(indices)
        s.dims.extend([4])
        initializers, sparse = [], [s]
    elif form != "dense":
        sys.exit(f"external: unknown form {form}")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializers,
    )
    graph.sparse_initializer.extend(sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(out, "wb") as f:
        f.write(model.SerializeToString())


def save(helper, graph, out):
    import onnx

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


def records(out, n, features, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (n, features)).astype(np.float32)
    with open(out, "w") as f:
        for row in x:
            f.write(",".join(repr(float(v)) for v in row) + "\n")


def read_records(path):
    rows = [
        [np.float32(float(v)) for v in line.split(",")]
        for line in open(path)
        if line.strip()
    ]
    return np.array(rows, dtype=np.float32)


def session(model, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def native(model, recs, batch, out, threads=1):
    sess = session(model, threads)
    x = read_records(recs)
    with open(out, "w") as f:
        for i in range(0, len(x), batch):
            probs = sess.run(["probs"], {"x": x[i : i + batch]})[0]
            for row in probs:
                bits = row.astype(np.float32).view(np.uint32)
                f.write(f"{int(np.argmax(row))}," + ",".join(str(int(b)) for b in bits) + "\n")


def bench_batch(model, batch, features, repeat):
    import time

    sess = session(model, 1)
    x = (np.arange(batch * features, dtype=np.float32) / 8).reshape(batch, features)
    sess.run(["probs"], {"x": x})  # warm up
    started = time.perf_counter()
    for _ in range(repeat):
        sess.run(["probs"], {"x": x})
    print(time.perf_counter() - started)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "classifier":
        classifier(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "mlp":
        mlp(args[0], *(int(a) for a in args[1:6]))
    elif cmd == "wide":
        wide(args[0], int(args[1]), int(args[2]))
    elif cmd == "deep":
        deep(args[0], int(args[1]), int(args[2]))
    elif cmd == "big":
        big(args[0], int(args[1]))
    elif cmd == "nested":
        nested(args[0], int(args[1]))
    elif cmd == "external":
        external(*args[:3])
    elif cmd == "records":
        records(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "native":
        native(args[0], args[1], int(args[2]), args[3], int(args[4]) if len(args) > 4 else 1)
    elif cmd == "bench-batch":
        bench_batch(args[0], int(args[1]), int(args[2]), int(args[3]))
    else:
        sys.exit(__doc__)
