function [xp, ho, wo, ph, pw, st, pad] = nvp_pool_setup(x, l)
% NVP_POOL_SETUP  Input padded with -Inf, output size, window and stride of vl_nnpool.
[h, w, c, n] = size(x);
pool = nvp_pair(l, 'pool');
ph = pool(1); pw = pool(2);
st = nvp_pair(l, 'stride');
pad = nvp_pad4(l, 'pad');
xp = -inf(h + pad(1) + pad(2), w + pad(3) + pad(4), c, n, class(x));
xp(pad(1) + (1:h), pad(3) + (1:w), :, :) = x;
ho = floor((h + pad(1) + pad(2) - ph) / st(1)) + 1;
wo = floor((w + pad(3) + pad(4) - pw) / st(2)) + 1;
end
