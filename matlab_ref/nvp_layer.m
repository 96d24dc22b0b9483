function l = nvp_layer(l)
% NVP_LAYER  A layer of net.layers as a plain struct with a canonical type.
%   Works for SimpleNN structs, struct-ified NetVLAD layers and NetVLAD class objects
%   (layerVLAD, layerVLADv2, layerWholeL2Normalize, layerTotalMaxPool, layerTotalAvgPool).
%   Types returned: conv relu pool normalize vlad vladv2 wholel2 totalmax totalavg.
cls = class(l);
if isobject(l)
  s = struct('type', l.type, 'name', l.name);
  if any(strcmp(properties(l), 'weights')), s.weights = l.weights; end
  l = s;
end
if ~isstruct(l) || ~isfield(l, 'type')
  error('nvp:layer', ['a layer has no ''type'' field. Octave cannot read MATLAB classdef objects ', ...
        'from MAT files: write a struct-ified copy with `netvlad-port export-mat NET.mat -o NET_struct.mat`']);
end
if ~isfield(l, 'weights'), l.weights = {}; end
if ~strcmp(l.type, 'custom')
  if strcmp(l.type, 'lrn'), l.type = 'normalize'; end
  return;
end
nw = numel(l.weights);
if strcmp(cls, 'layerVLAD') || nw == 2
  l.type = 'vlad';
elseif strcmp(cls, 'layerVLADv2') || nw == 3
  l.type = 'vladv2';
elseif strcmp(cls, 'layerTotalMaxPool') || strcmp(l.name, 'max:core')
  l.type = 'totalmax';
elseif strcmp(cls, 'layerTotalAvgPool') || strcmp(l.name, 'avg:core')
  l.type = 'totalavg';
elseif strcmp(cls, 'layerWholeL2Normalize') || any(strcmp(l.name, {'postL2', 'finalL2'}))
  l.type = 'wholel2';
else
  error('nvp:layer', 'unsupported custom layer ''%s''', l.name);
end
if any(strcmp(l.type, {'vlad', 'vladv2'})) && nw == 0
  error('nvp:layer', 'layer ''%s'' has no weights (NetVLAD classes not on the path?)', l.name);
end
end
