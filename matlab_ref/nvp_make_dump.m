function dump = nvp_make_dump(net_file, images_file, out_file, varargin)
% NVP_MAKE_DUMP  Reference dump of a SimpleNN NetVLAD network for `netvlad-port parity`.
%   dump = nvp_make_dump(net_file, images_file, out_file, 'name', value, ...)
%   net_file: a .mat with `net` (structs or NetVLAD class objects; any encoding MATLAB loads).
%   images_file: a .mat with `images`, H x W x 3 x N, RGB 0..255 (image 1 query, 2 positive,
%   3..N negatives). Options:
%     'precision'  'double' (default) or 'single'
%     'variant'    SARE variant run backward and in the SGD step (default 'trainGaussKernalInd')
%     'lr'         SGD learning rate (default 0.001); momentum 0.9, weight decay 0.001
%     'backend'    'own' (default: our .m operations, no MatConvNet needed) or 'simplenn'
%                  (MatConvNet's vl_simplenn and the NetVLAD classes, when on the path)
%   Fields written: see matlab_ref/README.md (the layout of tests/data/parity).
opts = struct('precision', 'double', 'variant', 'trainGaussKernalInd', 'lr', 0.001, 'backend', 'own');
for i = 1:2:numel(varargin), opts.(varargin{i}) = varargin{i + 1}; end
cast_ = @(a) cast(a, opts.precision);

s = load(net_file);
if isfield(s, 'net'), net = s.net; else, net = s; end
if iscell(net.layers), raw = net.layers; else, raw = num2cell(net.layers); end
L = numel(raw);
layers = cell(1, L);
for i = 1:L
  layers{i} = nvp_layer(raw{i});
  for j = 1:numel(layers{i}.weights)
    layers{i}.weights{j} = cast_(layers{i}.weights{j});
  end
end
avg = single(net.meta.normalization.averageImage);
images = load(images_file);
images = single(images.images);
n = size(images, 4);
x0 = bsxfun(@minus, images, avg(1, 1, :));  % in single, as serialAllFeats does
x0 = cast_(x0);

% forward, batched (acts{i} = input of layer i) and one image at a time (computeRepresentation)
acts = cell(1, L + 1);
acts{1} = x0;
for i = 1:L, acts{i + 1} = nvp_forward(layers{i}, acts{i}); end
desc = [];
for k = 1:n
  y = x0(:, :, :, k);
  for i = 1:L, y = nvp_forward(layers{i}, y); end
  desc(:, k) = y(:); %#ok<AGROW>
end
feats = reshape(acts{L + 1}, [], n);

variants = {'trainGaussKernalInd', 'trainGaussKernalJoint', 'trainExpKernalInd', 'trainExpKernalJoint', ...
            'trainCauchyKernelInd', 'trainCauchyKernelJoint'};
sare_all = struct();
for v = 1:numel(variants)
  [loss, g] = nvp_sare(variants{v}, feats);
  sare_all.(variants{v}) = struct('loss', loss, 'dzdy', g, 'thisbatchsize', n - 2);
end
[loss, g] = nvp_sare('trainWeakly', feats);
triplet = struct('loss', loss, 'dzdy', g, 'margin', 0.1);

% backward of the chosen variant through every layer
[~, dzdy] = nvp_sare(opts.variant, feats);
dzdx = cell(1, L + 1);
dzdw = cell(1, L);
dzdx{L + 1} = reshape(dzdy, size(acts{L + 1}));
for i = L:-1:1
  [dzdx{i}, dzdw{i}] = nvp_backward(layers{i}, acts{i}, acts{i + 1}, dzdx{i + 1});
end

% one SGD step from zero momentum: deepIBL's update, gradient divided by #negatives
nneg = n - 2;
weights = cell(1, L); w_after = cell(1, L); m_after = cell(1, L);
for i = 1:L
  weights{i} = layers{i}.weights;
  w_after{i} = {}; m_after{i} = {};
  for j = 1:numel(layers{i}.weights)
    w = layers{i}.weights{j};
    m = -0.001 * w - dzdw{i}{j} / nneg;
    m_after{i}{j} = m;
    w_after{i}{j} = w + opts.lr * m;
  end
end

names = cellfun(@(l) l.name, layers, 'UniformOutput', false);
types = cellfun(@(l) l.type, layers, 'UniformOutput', false);
if exist('OCTAVE_VERSION', 'builtin'), host = ['Octave ' OCTAVE_VERSION]; else, host = ['MATLAB ' version]; end
dump = struct();
dump.images = images;
dump.desc_test = desc;
dump.acts = acts;
dump.layer_names = names;
dump.layer_types = types;
dump.feats = feats;
dump.sare = sare_all.(opts.variant);
dump.sare_all = sare_all;
dump.sare_variant = opts.variant;
dump.triplet = triplet;
dump.dzdx = dzdx;
dump.dzdw = dzdw;
dump.weights = weights;
dump.sare_update_scale = 1 / nneg;
dump.sgd = struct('lr', opts.lr, 'momentum_factor', 0.9, 'weight_decay', 0.001, 'thisBatchSize', nneg);
dump.sgd.weights_after = w_after;
dump.sgd.momentum_after = m_after;
dump.train = struct('num_layers', L, 'backPropToLayer', 1, 'backPropDepth', L);
dump.info = struct('backend', opts.backend, 'normalisation', 'exact', 'precision', opts.precision, ...
                   'host', host, 'net_file', net_file);
if ~isempty(out_file)
  save(out_file, '-struct', 'dump', '-v7');
end
end
