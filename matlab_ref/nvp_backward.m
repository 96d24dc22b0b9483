function [dzdx, dzdw] = nvp_backward(l, x, y, dzdy)
% NVP_BACKWARD  dL/dx and dL/dweights of one layer given dL/dy (MatConvNet / NetVLAD semantics).
%   x is the layer input and y its output. dzdw{j} matches l.weights{j}.
dzdw = {};
switch l.type
  case 'conv'
    [dzdx, dzdw] = conv_backward(x, l, dzdy);
  case 'relu'
    leak = 0;
    if isfield(l, 'leak') && ~isempty(l.leak), leak = l.leak; end
    dzdx = dzdy .* ((x > 0) + leak * (x <= 0));
  case 'pool'
    dzdx = pool_backward(x, l, dzdy);
  case 'normalize'
    p = l.param;
    m1 = floor((p(1) - 1) / 2);
    [~, lsum] = nvp_lrn(x, p);
    a = dzdy .* x .* lsum .^ (-p(4) - 1);
    % channel t is in the window of c for c in t - m2 .. t + m1: the transposed window
    dzdx = dzdy .* lsum .^ (-p(4)) - 2 * p(3) * p(4) * x .* nvp_lrn_window(a, p(1) - 1 - m1, m1);
  case {'vlad', 'vladv2'}
    [dzdx, dzdw] = vlad_backward(x, l, dzdy);
  case 'wholel2'
    n = size(x, 4);
    xr = reshape(x, [], n);
    g = reshape(dzdy, [], n);
    xnorm = sqrt(sum(xr .^ 2, 1)) + 1e-12;  % as layerWholeL2Normalize.backward_
    dzdx = bsxfun(@rdivide, g, xnorm) - bsxfun(@times, xr, sum(xr .* g, 1) ./ xnorm .^ 3);
    dzdx = reshape(dzdx, size(x));
  case 'totalmax'
    [h, w, c, n] = size(x);
    [~, k] = max(reshape(x, h * w, c * n), [], 1);  % first maximum in column-major order
    dzdx = zeros(h * w, c * n, class(x));
    dzdx(sub2ind([h * w, c * n], k, 1:c * n)) = dzdy(:)';
    dzdx = reshape(dzdx, size(x));
  case 'totalavg'
    dzdx = repmat(dzdy / (size(x, 1) * size(x, 2)), [size(x, 1), size(x, 2), 1, 1]);
  otherwise
    error('nvp:backward', 'unsupported layer type ''%s'' (%s)', l.type, l.name);
end
end

function [dzdx, dzdw] = conv_backward(x, l, dzdy)
f = l.weights{1};
pad = nvp_pad4(l, 'pad'); stride = nvp_pair(l, 'stride'); dilate = nvp_pair(l, 'dilate');
[xp, ho, wo, fc, g] = nvp_conv_setup(x, f, pad, stride, dilate);
[fh, fw, ~, k] = size(f);
[h, w, ~, n] = size(x);
kg = k / g;
dxp = zeros(size(xp), class(x));
df = zeros(size(f), class(x));
for ig = 1:g
  cin = (ig - 1) * fc + (1:fc);
  cout = (ig - 1) * kg + (1:kg);
  gy = reshape(permute(dzdy(:, :, cout, :), [1 2 4 3]), [], kg);  % (Ho Wo N) x Kg
  for i = 1:fh
    for j = 1:fw
      rows = (i - 1) * dilate(1) + 1 + (0:ho - 1) * stride(1);
      cols = (j - 1) * dilate(2) + 1 + (0:wo - 1) * stride(2);
      patch = reshape(permute(xp(rows, cols, cin, :), [1 2 4 3]), [], fc);
      fij = reshape(f(i, j, :, cout), fc, kg);
      df(i, j, :, cout) = reshape(patch' * gy, [1, 1, fc, kg]);
      dp = permute(reshape(gy * fij', ho, wo, n, fc), [1 2 4 3]);
      dxp(rows, cols, cin, :) = dxp(rows, cols, cin, :) + dp;
    end
  end
end
dzdx = dxp(pad(1) + (1:h), pad(3) + (1:w), :, :);
dzdw = {df};
if numel(l.weights) > 1
  dzdw{2} = reshape(sum(sum(sum(dzdy, 1), 2), 4), size(l.weights{2}));
end
end

function dzdx = pool_backward(x, l, dzdy)
[h, w, c, n] = size(x);
[xp, ho, wo, ph, pw, st, pad] = nvp_pool_setup(x, l);
if strcmp(l.method, 'max')
  [~, idx] = nvp_pool_max(xp, ho, wo, ph, pw, st);
  dxp = accumarray(idx(:), double(dzdy(:)), [numel(xp), 1]);
  dxp = cast(reshape(dxp, size(xp)), class(x));
else
  [~, cnt] = nvp_pool_sum(x, l);
  share = bsxfun(@rdivide, dzdy, cnt);
  dxp = zeros(size(xp), class(x));
  for j = 1:pw
    for i = 1:ph
      rows = i + (0:ho - 1) * st(1);
      cols = j + (0:wo - 1) * st(2);
      dxp(rows, cols, :, :) = dxp(rows, cols, :, :) + share;
    end
  end
end
dzdx = dxp(pad(1) + (1:h), pad(3) + (1:w), :, :);
end

function [dzdx, dzdw] = vlad_backward(x, l, dzdy)
[h, w, d, n] = size(x);
k = size(l.weights{1}, 4);
v2 = strcmp(l.type, 'vladv2');
[w1, bias, w2] = nvp_vlad_weights(l, d, class(x));
dzdx = zeros(size(x), class(x));
dw1 = zeros(d, k, class(x)); db = zeros(1, k, class(x)); dw2 = zeros(d, k, class(x));
for in = 1:n
  xn = reshape(x(:, :, :, in), h * w, d);
  a = nvp_softmax_rows(bsxfun(@plus, xn * w1, bias));      % M x K
  gv = reshape(dzdy(1, :, :, in), k, d);                    % dL/dV, K x D
  da = xn * gv' + repmat(sum(gv .* w2', 2)', h * w, 1);     % dL/da
  ds = a .* bsxfun(@minus, da, sum(da .* a, 2));            % through the softmax
  dzdx(:, :, :, in) = reshape(a * gv + ds * w1', h, w, d);  % aggregation + assignment paths
  dw1 = dw1 + xn' * ds;
  db = db + sum(ds, 1);
  dw2 = dw2 + bsxfun(@times, gv, sum(a, 1)')';
end
dzdw = {reshape(dw1, [1, 1, d, k])};
if v2, dzdw{end + 1} = reshape(db, size(l.weights{2})); end
dzdw{end + 1} = reshape(dw2, [1, 1, d, k]);
end
