% MAKE_DUMP  Write a reference dump of a NetVLAD network for `netvlad-port parity`.
%
%   Octave, from a shell (no MatConvNet or NetVLAD code needed):
%     octave-cli matlab_ref/make_dump.m NET.mat IMAGES.mat DUMP.mat [precision [variant]]
%   MATLAB (or Octave), from the prompt:
%     addpath matlab_ref; nvp_make_dump('NET.mat', 'IMAGES.mat', 'DUMP.mat', 'precision', 'single');
%
%   See matlab_ref/README.md for the inputs and every field of the dump.
addpath(fileparts(mfilename('fullpath')));
if exist('OCTAVE_VERSION', 'builtin') && numel(argv()) >= 3
  args = argv();
  opts = {};
  if numel(args) >= 4, opts = [opts, {'precision', args{4}}]; end
  if numel(args) >= 5, opts = [opts, {'variant', args{5}}]; end
  nvp_make_dump(args{1}, args{2}, args{3}, opts{:});
  printf('%s: dump written\n', args{3});
elseif exist('net_file', 'var') && exist('images_file', 'var') && exist('out_file', 'var')
  nvp_make_dump(net_file, images_file, out_file);
else
  error('usage: octave-cli make_dump.m NET.mat IMAGES.mat DUMP.mat [precision [variant]]');
end
