function p = nvp_pad4(l, field)
% NVP_PAD4  [top bottom left right] padding of layer l (scalar or 4-vector field; default 0).
p = [0 0 0 0];
if isfield(l, field) && ~isempty(l.(field)), p = double(l.(field)(:)'); end
if numel(p) == 1, p = repmat(p, 1, 4); end
end
