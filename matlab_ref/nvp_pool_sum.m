function [s, cnt] = nvp_pool_sum(x, l)
% NVP_POOL_SUM  Window sums over real pixels and their counts: avg pooling divides by the
%   clipped window size (vl_nnpool.m; docs/matlab.md#matconvnet-operators).
[h, w, c, n] = size(x);
[~, ho, wo, ph, pw, st, pad] = nvp_pool_setup(x, l);
xp = zeros(h + pad(1) + pad(2), w + pad(3) + pad(4), c, n, class(x));
xp(pad(1) + (1:h), pad(3) + (1:w), :, :) = x;
mask = zeros(size(xp, 1), size(xp, 2), class(x));
mask(pad(1) + (1:h), pad(3) + (1:w)) = 1;
s = zeros(ho, wo, c, n, class(x));
cnt = zeros(ho, wo, class(x));
for j = 1:pw
  for i = 1:ph
    rows = i + (0:ho - 1) * st(1);
    cols = j + (0:wo - 1) * st(2);
    s = s + xp(rows, cols, :, :);
    cnt = cnt + mask(rows, cols);
  end
end
end
