function y = nvp_forward(l, x)
% NVP_FORWARD  Forward pass of one layer (l from nvp_layer), MatConvNet semantics.
%   x is H x W x C x N. Own implementations of vl_nnconv, vl_nnpool, vl_nnrelu,
%   vl_nnnormalize, vl_nnsoftmax and the NetVLAD layers, so no MatConvNet is needed.
switch l.type
  case 'conv'
    b = [];
    if numel(l.weights) > 1, b = l.weights{2}; end
    y = nvp_conv(x, l.weights{1}, b, nvp_pad4(l, 'pad'), nvp_pair(l, 'stride'), nvp_pair(l, 'dilate'));
  case 'relu'
    leak = 0;
    if isfield(l, 'leak') && ~isempty(l.leak), leak = l.leak; end
    y = max(x, 0) + leak * min(x, 0);
  case 'pool'
    y = nvp_pool(x, l);
  case 'normalize'
    [y, ~] = nvp_lrn(x, l.param);
  case {'vlad', 'vladv2'}
    y = nvp_vlad(x, l);
  case 'wholel2'
    n = size(x, 4);
    xr = reshape(x, [], n);
    y = bsxfun(@rdivide, xr, sqrt(sum(xr .^ 2, 1)) + 1e-12);
    y = reshape(y, [1, 1, size(y, 1), n]);
  case 'totalmax'
    y = max(max(x, [], 1), [], 2);
  case 'totalavg'
    y = mean(mean(x, 1), 2);
  otherwise
    error('nvp:forward', 'unsupported layer type ''%s'' (%s)', l.type, l.name);
end
end

function y = nvp_conv(x, f, b, pad, stride, dilate)
[xp, ho, wo, fc, g] = nvp_conv_setup(x, f, pad, stride, dilate);
[fh, fw, ~, k] = size(f);
n = size(x, 4);
kg = k / g;
y = zeros(ho, wo, k, n, class(x));
for ig = 1:g
  cin = (ig - 1) * fc + (1:fc);
  cout = (ig - 1) * kg + (1:kg);
  acc = zeros(ho * wo * n, kg, class(x));
  for i = 1:fh
    for j = 1:fw
      rows = (i - 1) * dilate(1) + 1 + (0:ho - 1) * stride(1);
      cols = (j - 1) * dilate(2) + 1 + (0:wo - 1) * stride(2);
      patch = reshape(permute(xp(rows, cols, cin, :), [1 2 4 3]), [], fc);
      acc = acc + patch * reshape(f(i, j, :, cout), fc, kg);
    end
  end
  y(:, :, cout, :) = permute(reshape(acc, ho, wo, n, kg), [1 2 4 3]);
end
if ~isempty(b), y = bsxfun(@plus, y, reshape(b, 1, 1, [])); end
end

function y = nvp_pool(x, l)
[xp, ho, wo, ph, pw, st] = nvp_pool_setup(x, l);
if strcmp(l.method, 'max')
  [y, ~] = nvp_pool_max(xp, ho, wo, ph, pw, st);
else
  [s, cnt] = nvp_pool_sum(x, l);
  y = bsxfun(@rdivide, s, cnt);
end
end

function y = nvp_vlad(x, l)
[h, w, d, n] = size(x);
k = size(l.weights{1}, 4);
[w1, bias, w2] = nvp_vlad_weights(l, d, class(x));
y = zeros(1, k, d, n, class(x));
for in = 1:n
  xn = reshape(x(:, :, :, in), h * w, d);
  a = nvp_softmax_rows(bsxfun(@plus, xn * w1, bias));
  v = a' * xn + bsxfun(@times, sum(a, 1)', w2');  % K x D
  y(1, :, :, in) = reshape(v, [1, k, d]);
end
end
