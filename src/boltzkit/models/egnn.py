"""E(n)-equivariant graph network (Satorras, Hoogeboom & Welling 2021, arXiv 2102.09844) on a
fully connected particle graph, time-conditioned: the score network of iDEM on DW-4 and LJ-n.

The output s(x, t) is a vector field on `[B, n_particles * spatial_dim]` that is equivariant to
rotations, reflections and permutations of the particles, invariant to translations, and free of
centre-of-mass motion (sum over particles of the output is zero).

Speed (exact reformulations, no change of the function):
* the first edge-MLP layer W [h_i, h_j, r_ij] + b is split into per-node products
  P = W_src h + b, Q = W_dst h (cost O(n H^2)) plus a per-edge broadcast sum P_i + Q_j + w r_ij,
  instead of an O(n^2 H^2) matmul on concatenated edge features; the node MLP's first layer
  likewise;
* the time embedding makes every particle's first hidden state equal, so the first layer's
  per-node products are computed once per sample (once per batch when t is a scalar, as in the
  reverse SDE);
* in the first layer every particle has the same features, so m_ij = m_ji: its messages are
  computed once per unordered pair (half the first layer's edge work);
* the last layer's node update (unused by the coordinate output) is skipped;
* without autograd, the forward pass runs in batch chunks sized to stay in cache and updates
  activations in place;
* with `fused=True` and without autograd, each layer's edge work runs in the compiled kernel of
  `boltzkit.models.fused` (cache-resident tiles, one pass per step, vectorised SiLU): about 2x
  faster again on LJ-13 (BENCHMARKS.md, "iDEM").

>>> import torch
>>> net = EGNN(n_particles=4, spatial_dim=2, hidden=16, n_layers=2)
>>> out = net(torch.randn(3, 8), torch.rand(3))
>>> out.shape, bool(out.view(3, 4, 2).sum(1).abs().max() < 1e-5)
(torch.Size([3, 8]), True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _silu(x: Tensor, inplace: bool) -> Tensor:
    return F.silu(x, inplace=True) if inplace else F.silu(x)


class EquivariantLayer(nn.Module):
    """One E(n)-equivariant graph convolution (EGCL), fully connected, mean aggregation.

    m_ij = SiLU(W_2 SiLU(W_1 [h_i, h_j, |x_i - x_j|^2] + b_1) + b_2), optionally gated by
    sigmoid(w_a . m_ij + b_a) (attention);
    x_i <- x_i + 1/(n-1) sum_j (x_i - x_j) / (|x_i - x_j| + 1) phi_x(m_ij),
    phi_x(m) = c tanh(w_x . SiLU(W_3 m + b_3) / c) (or without the tanh);
    h_i <- h_i + W_5 SiLU(W_4 [h_i, 1/(n-1) sum_j m_ij] + b_4) + b_5 (if `update_h`).

    Args:
        hidden: width H of node and edge features.
        attention: gate messages by a learned sigmoid.
        coords_range: c, the bound on |phi_x| when `tanh` is set.
        tanh: bound coordinate updates (stabilises early training).
        update_h: whether the layer updates node features (the last layer need not).
    """

    def __init__(self, hidden: int, attention: bool = True, coords_range: float = 15.0,
                 tanh: bool = True, update_h: bool = True) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(2 * hidden + 1)  # nn.Linear's init for the unsplit layer
        self.edge_src = nn.Linear(hidden, hidden)
        self.edge_dst = nn.Linear(hidden, hidden, bias=False)
        self.edge_dist = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound))
        for lin in (self.edge_src, self.edge_dst):
            nn.init.uniform_(lin.weight, -bound, bound)
        nn.init.uniform_(self.edge_src.bias, -bound, bound)
        self.edge_out = nn.Linear(hidden, hidden)
        self.attention = nn.Linear(hidden, 1) if attention else None
        self.coord_hidden = nn.Linear(hidden, hidden)
        self.coord_out = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.coord_out.weight, gain=1e-3)  # start near the identity map
        self.coords_range = coords_range
        self.tanh = tanh
        self.update_h = update_h
        if update_h:
            bound = 1.0 / math.sqrt(2 * hidden)
            self.node_self = nn.Linear(hidden, hidden)
            self.node_agg = nn.Linear(hidden, hidden, bias=False)
            for p in (self.node_self.weight, self.node_self.bias, self.node_agg.weight):
                nn.init.uniform_(p, -bound, bound)
            self.node_out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, h: Tensor, col: Tensor,
                pairs: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """x `[B, n, d]`, h `[B or 1, n or 1, H]` (size-1 dims broadcast), col `[n (n-1)]` the
        neighbour index of each edge (edges ordered by source particle), pairs (i, j) with
        i < j -> (x, h). When every particle has the same h and `pairs` is given, the message
        m_ij depends on |x_i - x_j|^2 only, so m_ij = m_ji: it is computed once per pair."""
        if pairs is not None and h.shape[1] == 1:
            return self._forward_pairs(x, h, pairs)
        inplace = not torch.is_grad_enabled()
        b, n, _ = x.shape
        x_nbr = x[:, col].view(b, n, n - 1, -1)
        diff = x.unsqueeze(2) - x_nbr
        r2 = diff.square().sum(-1, keepdim=True)
        z = self._first_edge_layer(h, r2, col, inplace)
        m, weight = self._messages(z, r2, inplace)
        x = x + (diff * weight).sum(2) / (n - 1)
        if self.update_h:
            h = self._update_h(h, m.sum(2) / (n - 1), inplace)
        return x, h

    def _forward_pairs(self, x: Tensor, h: Tensor,
                       pairs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        # Shared h: z_ij = (W_src + W_dst) h + b_1 + w r_ij is symmetric, and so are m_ij and
        # phi_ij; x_i gets +v_p and x_j gets -v_p from pair p = (i, j), v_p = diff_p phi_p / ..
        inplace = not torch.is_grad_enabled()
        first, second = pairs
        b, n, d = x.shape
        diff = x[:, first] - x[:, second]  # [B, P, d]
        r2 = diff.square().sum(-1, keepdim=True)
        base = self.edge_src(h) + self.edge_dst(h)  # [B|1, 1, H]
        if inplace:
            z = base.expand(b, r2.shape[1], -1).clone().addcmul_(r2, self.edge_dist)
        else:
            z = base + r2 * self.edge_dist
        m, weight = self._messages(z, r2, inplace)
        v = diff * weight
        update = x.new_zeros(b, n, d).index_add(1, first, v).index_add(1, second, -v)
        x = x + update / (n - 1)
        if self.update_h:
            agg = m.new_zeros(b, n, m.shape[-1]).index_add(1, first, m).index_add(1, second, m)
            h = self._update_h(h, agg / (n - 1), inplace)
        return x, h

    def forward_fused(self, kernel: object, x: Tensor, h: Tensor, edges: tuple[Tensor, Tensor],
                      symmetric: bool, tile_edges: int) -> tuple[Tensor, Tensor]:
        """The same layer through the compiled edge kernel (`boltzkit.models.fused`), without
        autograd. `edges` = (first, second) lists one sample's edges; `symmetric` means h is
        shared by all particles and each listed pair stands for both directions."""
        n = x.shape[1]
        src, dst = self.edge_src(h), self.edge_dst(h)
        if symmetric:  # z_ij = (W_src + W_dst) h + b_1 + w r_ij for every pair
            src, dst = src + dst, torch.zeros_like(dst)
        att = self.attention
        xsum, agg = kernel.egnn_edges(  # type: ignore[attr-defined]
            x, src, dst, edges[0], edges[1], symmetric, self.edge_dist,
            self.edge_out.weight, self.edge_out.bias,
            att.weight[0] if att is not None else self.edge_dist,
            float(att.bias) if att is not None else 0.0, att is not None,
            self.coord_hidden.weight, self.coord_hidden.bias, self.coord_out.weight[0],
            float(self.coords_range), self.tanh, self.update_h, tile_edges)
        x = x + xsum / (n - 1)
        if self.update_h:
            h = self._update_h(h, agg / (n - 1), inplace=True)
        return x, h

    def _messages(self, z: Tensor, r2: Tensor, inplace: bool) -> tuple[Tensor, Tensor]:
        # m = SiLU(W_2 SiLU(z) + b_2) (gated), and the coordinate weight phi(m) / (|diff| + 1).
        m = _silu(self.edge_out(_silu(z, inplace)), inplace)
        if self.attention is not None:
            gate = self.attention(m)
            m = m.mul_(gate.sigmoid_()) if inplace else m * torch.sigmoid(gate)
        phi = self.coord_out(_silu(self.coord_hidden(m), inplace))
        if self.tanh:
            phi = self.coords_range * torch.tanh(phi / self.coords_range)
        # phi / (|diff| + 1) first: [.., 1]-shaped work, then one pass over the [.., d] diffs.
        return m, phi / (r2.sqrt() + 1.0)

    def _update_h(self, h: Tensor, agg: Tensor, inplace: bool) -> Tensor:
        u = self.node_agg(agg)
        u = u.add_(self.node_self(h)) if inplace else u + self.node_self(h)
        return h + self.node_out(_silu(u, inplace))

    def _first_edge_layer(self, h: Tensor, r2: Tensor, col: Tensor, inplace: bool) -> Tensor:
        # W_1 [h_i, h_j, r_ij] + b_1 = (W_src h_i + b_1) + W_dst h_j + w r_ij, per-node products.
        b, n = r2.shape[:2]
        src = self.edge_src(h).unsqueeze(2)  # [b|1, n|1, 1, H]
        dst = self.edge_dst(h)
        if dst.shape[1] == 1:  # all particles share h: every edge sees the same P_i + Q_j
            base = src + dst.unsqueeze(2)
        else:
            base = src + dst[:, col].view(dst.shape[0], n, n - 1, -1)
        if inplace:
            z = base.expand(b, n, n - 1, -1).clone() if base.shape[:3] != (b, n, n - 1) else base
            return z.addcmul_(r2, self.edge_dist)
        return base + r2 * self.edge_dist


def register_graph(module: nn.Module, n_particles: int) -> None:
    """The fully connected graph's index buffers on `module`: `row`, `col` (the source and
    neighbour of each of the n (n-1) edges, by source) and `pair_first`, `pair_second` (i < j)."""
    idx = torch.arange(n_particles)
    col = idx.repeat(n_particles, 1)[~torch.eye(n_particles, dtype=torch.bool)]
    module.register_buffer("col", col, persistent=False)
    first, second = torch.triu_indices(n_particles, n_particles, 1)
    module.register_buffer("pair_first", first, persistent=False)
    module.register_buffer("pair_second", second, persistent=False)
    module.register_buffer("row", idx.repeat_interleave(n_particles - 1), persistent=False)


class EGNN(nn.Module):
    """Time-conditioned EGNN score network: s(x, t) = (x_L - x_0) projected to zero COM.

    h_0 = Linear(t) for every particle (time is the only node feature); L equivariant layers;
    the output is the coordinate displacement, centred.

    Args:
        n_particles: n.
        spatial_dim: d (dim = n d).
        hidden: feature width H (iDEM: 128).
        n_layers: number of layers L (iDEM: 3 for DW-4, 5 for LJ-n).
        attention: gate messages (as in the iDEM code).
        coords_range: bound on each coordinate message when `tanh` is set.
        tanh: bound coordinate messages.
        chunk_edges: without autograd, the batch is processed in chunks of about this many edges
            (B n (n-1)) to keep activations in cache; 0 disables chunking.
        symmetric_first_layer: compute the first layer's messages once per particle pair (they
            are symmetric there, all particles sharing the time embedding); False computes
            both directions (the same function, for tests and timing).
        fused: without autograd, run each layer's edge part through the compiled kernel of
            `boltzkit.models.fused` (built on first use; falls back to library calls when no
            compiler is available). The same function up to rounding.
        fused_tile_edges: edges per cache tile of the fused kernel.
    """

    def __init__(self, n_particles: int, spatial_dim: int, hidden: int = 128, n_layers: int = 3,
                 attention: bool = True, coords_range: float = 15.0, tanh: bool = True,
                 chunk_edges: int = 8192, symmetric_first_layer: bool = True,
                 fused: bool = False, fused_tile_edges: int = 1024) -> None:
        super().__init__()
        if n_particles < 2:
            raise ValueError("an EGNN needs at least two particles")
        self.n_particles, self.spatial_dim = n_particles, spatial_dim
        self.dim = n_particles * spatial_dim
        self.time_embed = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(
            EquivariantLayer(hidden, attention, coords_range, tanh, update_h=i < n_layers - 1)
            for i in range(n_layers)
        )
        self.chunk_edges = chunk_edges
        self.symmetric_first_layer = symmetric_first_layer
        self.fused, self.fused_tile_edges = fused, fused_tile_edges
        register_graph(self, n_particles)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x `[B, n d]`, t `[B]` or a scalar -> `[B, n d]` (COM-free)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        n_edges = self.n_particles * (self.n_particles - 1)
        batch = x.shape[0]
        kernel = self._kernel(x)
        if kernel is not None:
            return self._forward(x, t, kernel)
        if torch.is_grad_enabled() or not self.chunk_edges or batch * n_edges <= self.chunk_edges:
            return self._forward(x, t)
        size = max(1, self.chunk_edges // n_edges)
        ts = t.expand(batch).split(size) if t.ndim else [t] * math.ceil(batch / size)
        return torch.cat([self._forward(xc, tc) for xc, tc in zip(x.split(size), ts, strict=True)])

    def _kernel(self, x: Tensor) -> object | None:
        if not self.fused or torch.is_grad_enabled() or x.device.type != "cpu" \
                or x.dtype not in (torch.float32, torch.float64):
            return None
        from boltzkit.models.fused import egnn_kernel

        return egnn_kernel()

    def _forward(self, x: Tensor, t: Tensor, kernel: object | None = None) -> Tensor:
        b = x.shape[0]
        x0 = x.reshape(b, self.n_particles, self.spatial_dim)
        h = self.time_embed(t.reshape(-1, 1, 1))  # [b or 1, 1, H]: equal for every particle
        xl = x0
        pairs = (self.pair_first, self.pair_second) if self.symmetric_first_layer else None
        for layer in self.layers:
            if kernel is None:
                xl, h = layer(xl, h, self.col, pairs)
            elif pairs is not None and h.shape[1] == 1:
                xl, h = layer.forward_fused(kernel, xl, h, pairs, True, self.fused_tile_edges)
            else:
                xl, h = layer.forward_fused(kernel, xl, h, (self.row, self.col), False,
                                            self.fused_tile_edges)
        out = xl - x0
        return (out - out.mean(dim=1, keepdim=True)).reshape(b, self.dim)
